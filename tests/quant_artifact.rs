//! The quantized artifact round-trips: calibrate, build, save, load, run gives bit-identical
//! integer outputs to the in-memory quantized model, with any thread count.

use autoneural::engine::{Engine, IntegerPipeline};
use autoneural::pipeline::Pipeline;
use autoneural::quant::calibrate::{calibrate, CalibrationOptions, Rounding, DEFAULT_BINS};
use autoneural::quant::calibset::CalibrationSample;
use autoneural::quant::int_model::IntModel;
use autoneural::quant::scheme::Scheme;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn save_load_run_is_bit_identical() {
    let model_dir = root().join("models/autoneural-tiny-random");
    let pipe = Pipeline::load(&model_dir).unwrap();
    let samples = vec![
        CalibrationSample {
            image: Some(root().join("assets/sample_dashboard.png")),
            prompt: "What speed is shown?".into(),
        },
        CalibrationSample {
            image: None,
            prompt: "Which warning lights are on?".into(),
        },
    ];
    let opts = CalibrationOptions {
        bins: DEFAULT_BINS,
        progress: false,
        system: None,
        rounding: Rounding::default(),
    };
    let stats = calibrate(&pipe, &samples, &opts).unwrap();
    let pixels = pipe
        .load_pixels(&[autoneural::pipeline::ImageInput::File(
            root().join("assets/sample_dashboard.png"),
        )])
        .unwrap();
    let ids = pipe
        .prompt_ids(
            &autoneural::pipeline::PromptInput::Chat {
                user: "What speed is shown?".into(),
                system: None,
            },
            1,
        )
        .unwrap();
    for scheme in ["default", "w8a8", "vision=w8a16,text=w8a16", "w16a16"] {
        let scheme = Scheme::parse(scheme).unwrap();
        let q = IntModel::build(&pipe.model, &stats, &scheme, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        q.save(dir.path(), &model_dir).unwrap();
        let in_memory = Engine::Integer(Box::new(IntegerPipeline {
            model: q,
            config: pipe.model.config.clone(),
            tokenizer: autoneural::chat::TextTokenizer::from_file(
                &model_dir.join("tokenizer.json"),
            )
            .unwrap(),
            template: pipe.template.clone(),
        }));
        let loaded = Engine::load(dir.path()).unwrap();
        assert!(loaded.is_integer());
        let a = in_memory.intermediates(&pixels, &ids).unwrap();
        let b = loaded.intermediates(&pixels, &ids).unwrap();
        assert_eq!(a.logits, b.logits, "{scheme}: logits");
        assert_eq!(a.features, b.features, "{scheme}: features");
        // Thread count does not change the integers.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = one.install(|| loaded.intermediates(&pixels, &ids).unwrap());
        assert_eq!(a.logits, c.logits, "{scheme}: 1 thread");
        println!(
            "{scheme}: artifact round trip bit-identical ({} logits)",
            a.logits.numel()
        );
    }
}
