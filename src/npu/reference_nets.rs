//! Published convnets as graphs (cost only): the NPU cost model is fitted on their measured
//! latencies.

use crate::error::{Error, Result};
use crate::graph::Graph;

/// TEMPORARY stub until the reference nets land.
pub fn build(name: &str) -> Result<Graph> {
    Err(Error::input(format!("unknown reference net `{name}`")))
}
