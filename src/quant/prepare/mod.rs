//! Conversion time: building integer operators (`quant::ops`) from float weights and calibrated
//! activation ranges. Floats are allowed here; nothing here runs per token or per pixel.
pub mod attention;
pub mod connector;
pub mod conv;
pub mod conv1d;
pub mod elementwise;
pub mod embedding;
pub mod lfm2;
pub mod linear;
pub mod lut;
pub mod mobilenetv5;
pub mod norm;
pub mod pool;
pub mod rope;
pub mod softmax;
