//! The image preprocessor: decode (with its size limits and truncation checks) and resize to a
//! model's input size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = autoneural::preprocess::decode_image(data) {
        let t = autoneural::preprocess::preprocess(&img, 64);
        assert_eq!(t.shape(), &[3, 64, 64]);
        assert!(t.data().iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
