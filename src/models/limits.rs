//! The largest model dimensions the engine accepts from a config. Each is far beyond any real
//! checkpoint of the architectures it builds (LFM2-2.6B, MobileNetV5-300M at 768 px), and small
//! enough that a wrong or hostile config fails at once, before anything is allocated, instead of
//! asking for tens of gigabytes or looping for seconds.

use crate::error::{Error, Result};

/// Input side of the vision encoder (4x the 768 px the architecture is built for).
pub const IMAGE_SIZE: usize = 3072;
/// Channels of any layer.
pub const CHANNELS: usize = 1 << 16;
/// Blocks of the vision encoder after expanding repeats.
pub const VISION_BLOCKS: usize = 1024;
/// Repeat count of one block string.
pub const BLOCK_REPEAT: usize = 256;
/// Convolution kernel side.
pub const KERNEL: usize = 15;
/// Expansion ratio of a block.
pub const EXPANSION: f64 = 64.0;
/// Vocabulary size.
pub const VOCAB: usize = 1 << 22;
/// Hidden, intermediate and projector widths.
pub const WIDTH: usize = 1 << 17;
/// Language-model layers.
pub const LAYERS: usize = 1024;
/// Attention heads (query or key/value).
pub const HEADS: usize = 1024;
/// Attention head width.
pub const HEAD_DIM: usize = 2048;
/// Short-convolution window.
pub const CONV_CACHE: usize = 1024;
/// Positions (context length).
pub const POSITIONS: usize = 1 << 22;

/// `value` must be in `1..=max`.
pub fn check(key: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::config(format!("{key} must be positive")));
    }
    if value > max {
        return Err(Error::config(format!(
            "{key} {value} is larger than the {max} this engine accepts"
        )));
    }
    Ok(())
}

/// Physical memory of this machine (`MemTotal` + `SwapTotal` of `/proc/meminfo`), if known.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

/// Refuses to go on when `need` bytes exceed this machine's memory.
pub fn check_memory(need: u64, what: &str) -> Result<()> {
    match machine_memory() {
        Some(have) if need > have => Err(Error::input(format!(
            "the model needs about {:.1} GB for {what}, more than this machine's {:.1} GB of memory",
            need as f64 / 1e9,
            have as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}
