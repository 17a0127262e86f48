//! Average pooling, nearest upsampling and channel concatenation on `[C, H, W]` maps.
