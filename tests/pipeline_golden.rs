//! End-to-end parity with the PyTorch references on every golden case (AutoNeural, LFM2 and the
//! InternVL / Llama baseline): vision features, image
//! embeddings, logits, greedy generation and the chat prompt's token ids.

mod common;

use autoneural::generate::{generate, GenerateOptions, SamplingParams};
use autoneural::observe::NoObserver;
use autoneural::pipeline::{Pipeline, PromptInput};
use common::*;

#[test]
fn every_golden_case_matches_the_reference() {
    check_cases(cases());
}

/// InternVL (InternViT + pixel shuffle + projector + Llama) and plain Llama against
/// transformers, in both InternVL key layouts.
#[test]
fn every_baseline_case_matches_the_reference() {
    let names = baseline_cases();
    assert_eq!(names.len(), 4, "the manifest lists the baseline cases");
    check_cases(names);
}

fn check_cases(names: Vec<String>) {
    let mut report = Vec::new();
    for name in names {
        let case = Case::load(&name);
        let pipe = Pipeline::load(&case.model_dir()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let model = &pipe.model;
        let prompt_ids = case.ids("prompt_ids");

        // Vision + connector.
        let pixels = case.pixels();
        let enc = pipe.encode_images(&pixels, &mut NoObserver).unwrap();
        let (mut e_feat, mut e_emb) = (0.0, 0.0);
        if !enc.is_empty() {
            let feats: Vec<_> = enc.iter().map(|e| e.features.clone()).collect();
            e_feat = max_rel_err(&concat_rows(&feats), &case.npy("vision_features.npy"));
            let embs: Vec<_> = enc.iter().map(|e| e.embeddings.clone()).collect();
            e_emb = max_rel_err(&concat_rows(&embs), &case.npy("image_embeddings.npy"));
        }
        let image_embeddings: Vec<_> = enc.into_iter().map(|e| e.embeddings).collect();

        // Prompt logits.
        let x = model.embed_prompt(&prompt_ids, &image_embeddings).unwrap();
        let logits = model.prompt_logits(x.clone(), &mut NoObserver).unwrap();
        let e_logits = max_rel_err(&logits, &case.npy("logits.npy"));

        // Greedy generation, never stopping early (the reference ignored EOS too).
        let want = case.ids("generated_ids");
        let opts = GenerateOptions {
            max_new_tokens: want.len(),
            stop_tokens: vec![],
            sampling: SamplingParams::default(),
            context: model.config.text.max_position_embeddings(),
        };
        let mut state = model.new_state(prompt_ids.len() + want.len());
        let gen = generate(&model.text, &mut state, x, &opts, &mut |_| Ok(())).unwrap();

        // The chat template + tokenizer reproduce the reference prompt ids.
        let chat_ok = match case.json["user_text"].as_str() {
            Some(user) => {
                let ids = pipe
                    .prompt_ids(
                        &PromptInput::Chat {
                            user: user.to_string(),
                            system: None,
                        },
                        case.num_images(),
                    )
                    .unwrap();
                assert_eq!(
                    ids, prompt_ids,
                    "{name}: chat prompt ids differ from the reference"
                );
                "yes"
            }
            None => "n/a",
        };
        println!("{name}: features {e_feat:.2e} embeddings {e_emb:.2e} logits {e_logits:.2e}");
        report.push(format!(
            "{name:28} images {} prompt {:4} | features {e_feat:.2e} embeddings {e_emb:.2e} logits {e_logits:.2e} | greedy {} tokens | chat ids {chat_ok}",
            case.num_images(),
            prompt_ids.len(),
            want.len()
        ));
        println!("{}", report.last().unwrap());
        assert!(e_feat <= TOL, "{name}: vision features rel err {e_feat}");
        assert!(e_emb <= TOL, "{name}: image embeddings rel err {e_emb}");
        assert!(e_logits <= TOL, "{name}: logits rel err {e_logits}");
        assert!(
            want.len() >= 16,
            "{name}: golden generation shorter than 16 tokens"
        );
        assert_eq!(
            gen.tokens, want,
            "{name}: greedy tokens differ from transformers.generate"
        );
    }
}
