//! One file per architecture; names follow checkpoint keys.

pub mod autoneural;
pub mod connector;
pub mod internvl;
pub mod lfm2;
pub mod limits;
pub mod llama;
pub mod mobilenetv5;
pub mod presets;
