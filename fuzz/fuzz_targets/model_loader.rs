//! The float model loader: `config.json`, `tokenizer.json` and `model.safetensors` from one
//! input, through `Engine::load` and a prompt's tokenization. Any panic, hang or unbounded
//! allocation is a finding; errors are the expected outcome.
#![no_main]

#[path = "files.rs"]
mod files;

use autoneural::pipeline::PromptInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = files::split(data, 3);
    let dir = files::write_dir(&[
        ("config.json", p[0]),
        ("tokenizer.json", p[1]),
        ("model.safetensors", p[2]),
    ]);
    if let Ok(engine) = autoneural::engine::Engine::load(dir.path()) {
        let prompt = PromptInput::Chat {
            user: "What speed is shown? <|im_end|>".into(),
            system: None,
        };
        let _ = engine.prompt_ids(&prompt, 0);
    }
});
