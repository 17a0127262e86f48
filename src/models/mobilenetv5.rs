//! MobileNetV5 encoder + Multi-Scale Fusion Adapter, mirroring timm `MobileNetV5Encoder`.
