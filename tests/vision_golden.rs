//! Golden parity of the MobileNetV5 encoder + MSFA with timm.
//!
//! Every case under `tests/golden/` (listed in `manifest.json`) with `num_images > 0` is run:
//! each `pixels_<i>.npy` `[3, H, W]` goes through the encoder graph built for its size, whose
//! `[R * R, C]` token features are stacked and compared with `vision_features.npy`
//! (`max |a - b| / max |b| <= 1e-4`).

mod common;

use autoneural::exec::{FloatProgram, Val};
use autoneural::models::autoneural::VISION_ROOT;
use autoneural::models::mobilenetv5::{graph, VisionConfig};
use autoneural::observe::NoObserver;
use autoneural::weights::WeightStore;
use common::*;

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
        let mut tokens = Vec::new();
        let mut nodes = 0;
        for px in case.pixels() {
            let (h, w) = (px.dim(1), px.dim(2));
            let g = graph::build(&vcfg, &store, VISION_ROOT, (h, w))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let (pixels, features) = (g.port("pixels").unwrap(), g.port("features").unwrap());
            nodes = g.nodes.len();
            let enc = FloatProgram::load(g, &store).unwrap_or_else(|e| panic!("{name}: {e}"));
            let out = enc
                .run(
                    vec![(pixels, Val::F(px))],
                    &[features],
                    None,
                    &mut NoObserver,
                )
                .unwrap();
            let r = vcfg.msfa_output_resolution;
            assert_eq!(out[0].shape(), &[r * r, vcfg.num_features]);
            tokens.extend(out);
        }
        let err = max_rel_err(&concat_rows(&tokens), &case.npy("vision_features.npy"));
        println!("{name:28} {nodes} graph nodes, max rel err {err:.3e}");
        assert!(err <= TOL, "{name}: vision features rel err {err}");
        ran += 1;
    }
    assert!(
        ran >= 3,
        "expected at least 3 golden cases with images, ran {ran}"
    );
}
