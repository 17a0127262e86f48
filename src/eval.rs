//! Exact-match evaluation of a model on a VQA dataset split (the layout `autoneural dataset`
//! writes): every question is asked in a fresh single-turn chat with its image, answered
//! greedily, and counts as correct when the generated text (trimmed) equals the reference
//! answer exactly. The majority baseline answers every question with the most common answer of
//! its type in the training split.

use crate::dataset::Record;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, SamplingParams};
use crate::pipeline::{ImageInput, PromptInput};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One answered question.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub image: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub question: String,
    pub expected: String,
    pub got: String,
    pub correct: bool,
}

/// Correct / total for one question type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub correct: usize,
    pub total: usize,
}

impl Tally {
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    fn add(&mut self, correct: bool) {
        self.total += 1;
        self.correct += usize::from(correct);
    }
}

/// Per-type tallies; the overall accuracy is over all questions (types weigh by their count).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Scores {
    pub per_type: BTreeMap<String, Tally>,
}

impl Scores {
    pub fn from_outcomes(outcomes: &[Outcome]) -> Self {
        let mut s = Scores::default();
        for o in outcomes {
            s.per_type.entry(o.kind.clone()).or_default().add(o.correct);
        }
        s
    }

    pub fn overall(&self) -> Tally {
        self.per_type.values().fold(Tally::default(), |a, t| Tally {
            correct: a.correct + t.correct,
            total: a.total + t.total,
        })
    }
}

/// The most common answer of each question type (ties: the alphabetically first answer, so the
/// baseline does not depend on file order).
pub fn majority_answers(train: &[Record]) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for r in train {
        *counts
            .entry(&r.kind)
            .or_default()
            .entry(&r.answer)
            .or_default() += 1;
    }
    counts
        .into_iter()
        .filter_map(|(kind, answers)| {
            let best = answers.values().copied().max()?;
            let answer = answers.into_iter().find(|&(_, c)| c == best)?.0;
            Some((kind.to_string(), answer.to_string()))
        })
        .collect()
}

/// Scores of always answering `majority[type]` (a type missing from `majority` scores zero).
pub fn majority_scores(majority: &BTreeMap<String, String>, questions: &[Record]) -> Scores {
    let mut s = Scores::default();
    for r in questions {
        let hit = majority
            .get(&r.kind)
            .is_some_and(|a| a.trim() == r.answer.trim());
        s.per_type.entry(r.kind.clone()).or_default().add(hit);
    }
    s
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Generation budget per answer (answers are a few tokens; the cap stops runaway output).
    pub max_new_tokens: usize,
    pub progress: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            progress: false,
        }
    }
}

/// How often two runs over the same questions gave the same answer (right or wrong): for an
/// integer scheme against float, the share of greedy answers quantization leaves unchanged.
pub fn agreement(a: &[Outcome], b: &[Outcome]) -> Result<Tally> {
    if a.len() != b.len() {
        return Err(Error::input(format!(
            "cannot compare runs over {} and {} questions",
            a.len(),
            b.len()
        )));
    }
    let mut t = Tally::default();
    for (x, y) in a.iter().zip(b) {
        if x.image != y.image || x.question != y.question {
            return Err(Error::input(format!(
                "runs differ in their questions ({} {:?} vs {} {:?})",
                x.image, x.question, y.image, y.question
            )));
        }
        t.add(x.got == y.got);
    }
    Ok(t)
}

/// Asks every question in `questions` (image paths relative to `dataset_dir`). Each image is
/// encoded once for all its questions; images are processed in parallel. Outcomes keep the
/// order of `questions`.
pub fn evaluate(
    engine: &Engine,
    dataset_dir: &Path,
    questions: &[Record],
    opts: &EvalOptions,
) -> Result<Vec<Outcome>> {
    if engine.config().vision.is_none() {
        return Err(Error::input(
            "this is a text-only model: it cannot answer questions about images",
        ));
    }
    // Consecutive questions about the same image share its encoding.
    let mut groups: Vec<&[Record]> = Vec::new();
    let mut start = 0;
    for i in 1..=questions.len() {
        if i == questions.len() || questions[i].image != questions[start].image {
            groups.push(&questions[start..i]);
            start = i;
        }
    }
    let bar = if opts.progress {
        indicatif::ProgressBar::new(questions.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} questions ({elapsed}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("evaluating");
    let gen = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        stop_tokens: engine.stop_tokens(),
        sampling: SamplingParams::default(),
        context: engine.config().text.max_position_embeddings(),
    };
    let per_group: Vec<Vec<Outcome>> = groups
        .par_iter()
        .map(|group| {
            let image = dataset_dir.join(&group[0].image);
            let outcomes = answer_group(engine, &image, group, &gen)
                .map_err(|e| Error::input(format!("evaluating {}: {e}", image.display())))?;
            bar.inc(group.len() as u64);
            Ok(outcomes)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    Ok(per_group.into_iter().flatten().collect())
}

fn answer_group(
    engine: &Engine,
    image: &Path,
    group: &[Record],
    gen: &GenerateOptions,
) -> Result<Vec<Outcome>> {
    let pixels = engine.load_pixels(&[ImageInput::File(image.to_path_buf())])?;
    let embeds = engine.encode_images(&pixels)?;
    let stops = &gen.stop_tokens;
    group
        .iter()
        .map(|r| {
            let ids = engine.prompt_ids(
                &PromptInput::Chat {
                    user: r.question.clone(),
                    system: None,
                },
                1,
            )?;
            let out = engine.generate_from(&embeds, &ids, gen, &mut |_| Ok(()))?;
            let text_ids: Vec<u32> = out
                .tokens
                .iter()
                .copied()
                .filter(|t| !stops.contains(t))
                .collect();
            let got = engine.tokenizer().decode(&text_ids)?;
            let correct = got.trim() == r.answer.trim();
            Ok(Outcome {
                image: r.image.clone(),
                kind: r.kind.clone(),
                question: r.question.clone(),
                expected: r.answer.clone(),
                got: got.trim().to_string(),
                correct,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: &str, answer: &str) -> Record {
        Record {
            image: "images/test/000001.png".into(),
            question: "q?".into(),
            answer: answer.into(),
            kind: kind.into(),
        }
    }

    fn outcome(question: &str, got: &str) -> Outcome {
        Outcome {
            image: "images/test/000001.png".into(),
            kind: "a".into(),
            question: question.into(),
            expected: "Yes.".into(),
            got: got.into(),
            correct: got == "Yes.",
        }
    }

    #[test]
    fn agreement_counts_identical_answers_right_or_wrong() {
        let a = [
            outcome("q1", "Yes."),
            outcome("q2", "No."),
            outcome("q3", "Two."),
        ];
        let b = [
            outcome("q1", "Yes."),
            outcome("q2", "No."),
            outcome("q3", "One."),
        ];
        assert_eq!(
            agreement(&a, &b).unwrap(),
            Tally {
                correct: 2,
                total: 3
            }
        );
        assert!(agreement(&a, &b[..2]).is_err());
        let c = [
            outcome("q1", "Yes."),
            outcome("qx", "No."),
            outcome("q3", "Two."),
        ];
        assert!(agreement(&a, &c).is_err());
    }

    #[test]
    fn majority_is_most_common_with_alphabetical_ties() {
        let train = vec![
            rec("a", "Yes."),
            rec("a", "No."),
            rec("a", "Yes."),
            rec("b", "Two."),
            rec("b", "One."),
        ];
        let m = majority_answers(&train);
        assert_eq!(m["a"], "Yes.");
        assert_eq!(m["b"], "One.");
        let test = vec![
            rec("a", "Yes."),
            rec("a", "No."),
            rec("b", "Two."),
            rec("c", "x"),
        ];
        let s = majority_scores(&m, &test);
        assert_eq!(
            s.per_type["a"],
            Tally {
                correct: 1,
                total: 2
            }
        );
        assert_eq!(
            s.per_type["b"],
            Tally {
                correct: 0,
                total: 1
            }
        );
        assert_eq!(
            s.per_type["c"],
            Tally {
                correct: 0,
                total: 1
            }
        );
        assert_eq!(
            s.overall(),
            Tally {
                correct: 1,
                total: 4
            }
        );
        assert!((s.overall().accuracy() - 0.25).abs() < 1e-12);
    }
}
