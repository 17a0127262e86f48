//! Model export to other runtimes' formats (`onnx`: QDQ and float ONNX for NPU toolchains and
//! ONNX Runtime).

pub mod onnx;
