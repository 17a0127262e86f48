//! Golden parity of the MobileNetV5 encoder + MSFA with timm.
//!
//! Every case under `tests/golden/` (listed in `manifest.json`) with `num_images > 0` is run:
//! each `pixels_<i>.npy` `[3, H, W]` goes through the encoder, the `[C, R, R]` outputs are turned
//! into `[R * R, C]` tokens, stacked, and compared with `vision_features.npy`
//! (`max |a - b| / max |b| <= 1e-4`).

mod common;

use autoneural::models::mobilenetv5::{MobileNetV5Encoder, VisionConfig};
use autoneural::observe::NoObserver;
use autoneural::weights::{WeightStore, Weights};
use common::*;
use std::sync::Arc;

#[test]
fn vision_features_match_timm() {
    let mut ran = 0;
    for name in cases() {
        let case = Case::load(&name);
        if case.num_images() == 0 {
            continue;
        }
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(case.model_dir().join("config.json")).unwrap(),
        )
        .unwrap();
        let vcfg: VisionConfig = serde_json::from_value(config["vision_config"].clone()).unwrap();
        let store = WeightStore::open_dir(&case.model_dir()).unwrap();
        let w = Weights::new(Arc::new(store)).pp("model.vision_tower.timm_model");
        let enc = MobileNetV5Encoder::load(&vcfg, &w).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut tokens = Vec::new();
        for px in case.pixels() {
            let map = enc.forward(&px, &mut NoObserver).unwrap();
            let r = vcfg.msfa_output_resolution;
            assert_eq!(map.shape(), &[enc.out_channels(), r, r]);
            tokens.push(enc.feature_tokens(&map).unwrap());
        }
        let err = max_rel_err(&concat_rows(&tokens), &case.npy("vision_features.npy"));
        println!(
            "{name:28} {} blocks, max rel err {err:.3e}",
            enc.num_blocks()
        );
        assert!(err <= TOL, "{name}: vision features rel err {err}");
        ran += 1;
    }
    assert!(
        ran >= 3,
        "expected at least 3 golden cases with images, ran {ran}"
    );
}
