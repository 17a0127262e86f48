//! One file per architecture; names follow checkpoint keys.

pub mod autoneural;
pub mod connector;
pub mod lfm2;
pub mod limits;
pub mod mobilenetv5;
