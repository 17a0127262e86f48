//! SVG charts of the cost model: predicted vs published latencies, per-node time breakdowns.
