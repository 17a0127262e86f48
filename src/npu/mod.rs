//! An NPU (and CPU) latency and memory model over the graph: per-node roofline cost at a
//! precision scheme on a hardware profile, the scenarios an edge VLM user asks about (vision
//! encoder, chunked prefill, time to first token, decode, memory budgets), the fit of its few free
//! factors to published measurements, and charts.

pub mod chart;
pub mod cost;
pub mod fit;
pub mod predict;
pub mod profile;
pub mod reference_nets;
pub mod scheme;
