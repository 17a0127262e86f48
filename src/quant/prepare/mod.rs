//! Conversion time: building integer operators (`quant::ops`) from float weights and calibrated
//! activation ranges. Floats are allowed here; nothing here runs per token or per pixel.
