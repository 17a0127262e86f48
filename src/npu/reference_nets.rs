//! Published convnets as graphs (cost only): the NPU cost model is fitted on their measured
//! latencies.
