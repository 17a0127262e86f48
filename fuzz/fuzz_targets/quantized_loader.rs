//! The quantized-artifact loader: `config.json`, `graph.json` and `quantized.safetensors` from
//! one input. The digest check is skipped (a mutated file would never get past it), so the
//! parsers and validators behind it are what is fuzzed.
#![no_main]

#[path = "files.rs"]
mod files;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = files::split(data, 3);
    let dir = files::write_dir(&[
        ("config.json", p[0]),
        ("graph.json", p[1]),
        ("quantized.safetensors", p[2]),
    ]);
    let _ = autoneural::artifact::QuantizedModel::load_without_digests(dir.path());
});
