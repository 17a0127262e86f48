//! Conversion time: building integer operators (`quant::ops`) from float weights and calibrated
//! activation ranges. Floats are allowed here; nothing here runs per token or per pixel.
pub mod linear;
pub mod conv;
pub mod elementwise;
pub mod attention;
pub mod lut;
pub mod norm;
pub mod rope;
pub mod softmax;
pub mod pool;
pub mod embedding;
pub mod conv1d;
pub mod mobilenetv5;
pub mod connector;
pub mod lfm2;
