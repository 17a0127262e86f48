//! The `.npy` reader and the pixel-array checks behind `--pixels`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = autoneural::npy::parse_f32(data, Path::new("fuzz.npy")) {
        assert_eq!(t.data().len(), t.shape().iter().product::<usize>());
        let _ = autoneural::preprocess::check_pixels(t, Path::new("fuzz.npy"));
    }
});
