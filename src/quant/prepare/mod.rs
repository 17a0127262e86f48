//! Conversion time: building integer operators (`quant::ops`) from float weights and calibrated
//! activation ranges. Floats are allowed here; nothing here runs per token or per pixel.
pub mod attention;
pub mod conv;
pub mod conv1d;
pub mod elementwise;
pub mod embedding;
pub mod linear;
pub mod lut;
pub mod norm;
pub mod pool;
pub mod rope;
pub mod softmax;
pub mod tokens;
