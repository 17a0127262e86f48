//! 2-D convolutions (regular, depthwise, pointwise) with TF-"same" and explicit padding.
