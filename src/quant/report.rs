//! Quantization error analysis: run the float and the integer model on the same inputs, compare
//! every observed op output (SQNR, relative RMS), the end-to-end tensors, and the prompt
//! perplexity, and render an SVG chart of SQNR by layer.

use crate::error::Result;
use crate::models::autoneural::AutoNeuralModel;
use crate::observe::{Observer, Recorder};
use crate::quant::int_model::IntModel;
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// Accumulated signal and error power of one tensor name over all inputs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ErrorStats {
    /// Order of first appearance in the forward pass (for charts).
    pub order: usize,
    pub signal: f64,
    pub error: f64,
    pub count: usize,
}

impl ErrorStats {
    pub fn sqnr_db(&self) -> f64 {
        if self.error == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.signal / self.error).log10()
        }
    }
    pub fn relative_rms(&self) -> f64 {
        (self.error / self.signal.max(f64::MIN_POSITIVE)).sqrt()
    }
}

/// Compares integer observations, as they arrive, with a recording of the float pass.
struct Comparator<'a> {
    reference: &'a BTreeMap<String, Tensor>,
    stats: &'a mut BTreeMap<String, ErrorStats>,
}

impl Observer for Comparator<'_> {
    fn observe(&mut self, name: &str, t: &Tensor) {
        let Some(r) = self.reference.get(name) else {
            return;
        };
        if r.shape() != t.shape() {
            return;
        }
        let next = self.stats.len();
        let s = self
            .stats
            .entry(name.to_string())
            .or_insert_with(|| ErrorStats {
                order: next,
                ..Default::default()
            });
        for (&a, &b) in r.data().iter().zip(t.data()) {
            let d = (a - b) as f64;
            s.signal += (a as f64) * (a as f64);
            s.error += d * d;
        }
        s.count += 1;
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// Every op, keyed `vision:<name>` / `text:<name>`.
    pub ops: BTreeMap<String, ErrorStats>,
    /// Mean negative log-likelihood per predicted prompt token, float and integer.
    pub nll_float: f64,
    pub nll_integer: f64,
    pub predicted_tokens: usize,
}

impl Report {
    pub fn perplexity_float(&self) -> f64 {
        self.nll_float.exp()
    }
    pub fn perplexity_integer(&self) -> f64 {
        self.nll_integer.exp()
    }
    pub fn get(&self, key: &str) -> Option<&ErrorStats> {
        self.ops.get(key)
    }
    /// The `n` ops with the lowest SQNR.
    pub fn worst(&self, n: usize) -> Vec<(&String, &ErrorStats)> {
        let mut v: Vec<_> = self.ops.iter().collect();
        v.sort_by(|a, b| a.1.sqnr_db().total_cmp(&b.1.sqnr_db()));
        v.truncate(n);
        v
    }
}

/// Runs both models on each image (vision + connector) and each prompt (language model,
/// teacher-forced) and accumulates per-op errors and perplexities.
pub fn analyse(
    float: &AutoNeuralModel,
    quant: &IntModel,
    images: &[Tensor],
    prompts: &[Vec<u32>],
) -> Result<Report> {
    let mut report = Report::default();
    let mut vision = BTreeMap::new();
    for px in images {
        let mut rec = Recorder::new(|_: &str| true);
        float.encode_image(px, &mut rec)?;
        let mut cmp = Comparator {
            reference: &rec.tensors,
            stats: &mut vision,
        };
        quant.encode_image(px, &mut cmp)?;
    }
    let mut text = BTreeMap::new();
    let (mut nll_f, mut nll_q, mut n) = (0.0, 0.0, 0usize);
    for ids in prompts {
        let mut rec = Recorder::new(|_: &str| true);
        let logits_f = float.prompt_logits(float.embed(ids)?, &mut rec)?;
        let mut cmp = Comparator {
            reference: &rec.tensors,
            stats: &mut text,
        };
        let logits_q = quant
            .prompt_logits(quant.embed(ids)?, &mut cmp)?
            .dequantize();
        for t in 0..ids.len().saturating_sub(1) {
            let target = ids[t + 1] as usize;
            nll_f += nll(logits_f.row(t), target);
            nll_q += nll(logits_q.row(t), target);
            n += 1;
        }
    }
    for (k, v) in vision {
        report.ops.insert(format!("vision:{k}"), v);
    }
    for (k, mut v) in text {
        v.order += 100_000; // text ops after vision ops in charts
        report.ops.insert(format!("text:{k}"), v);
    }
    report.predicted_tokens = n;
    if n > 0 {
        report.nll_float = nll_f / n as f64;
        report.nll_integer = nll_q / n as f64;
    }
    Ok(report)
}

/// `-log softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    -(logits[target] as f64 - max - z.ln())
}

/// A bar chart of SQNR (dB) per op in forward order, as a standalone SVG.
pub fn svg_chart(report: &Report, title: &str) -> String {
    let mut ops: Vec<_> = report.ops.iter().collect();
    ops.sort_by_key(|(_, s)| s.order);
    let (w, h, left, bottom) = (1200.0, 420.0, 50.0, 40.0);
    let n = ops.len().max(1) as f64;
    let bar = (w - left - 10.0) / n;
    let max_db = ops
        .iter()
        .map(|(_, s)| s.sqnr_db())
        .filter(|v| v.is_finite())
        .fold(10.0f64, f64::max)
        .ceil();
    let y = |db: f64| (h - bottom) - (db.clamp(0.0, max_db) / max_db) * (h - bottom - 30.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{left}\" y=\"16\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    for db in (0..=max_db as i64).step_by(10) {
        let yy = y(db as f64);
        out += &format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"5\" y=\"{:.1}\">{db} dB</text>\n", w - 10.0, yy + 4.0);
    }
    for (i, (name, s)) in ops.iter().enumerate() {
        let db = if s.sqnr_db().is_finite() {
            s.sqnr_db()
        } else {
            max_db
        };
        let x = left + i as f64 * bar;
        let colour = if name.starts_with("vision:") {
            "#3b7dd8"
        } else {
            "#d8843b"
        };
        out += &format!(
            "<rect x=\"{x:.2}\" y=\"{:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"{colour}\"><title>{} {:.1} dB</title></rect>\n",
            y(db),
            (bar - 0.5).max(0.5),
            (h - bottom) - y(db),
            escape(name),
            db
        );
    }
    out += &format!(
        "<text x=\"{left}\" y=\"{}\">ops in forward order (blue: vision + connector, orange: language model); hover a bar for its name</text>\n</svg>\n",
        h - 12.0
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_nll() {
        let s = ErrorStats {
            order: 0,
            signal: 100.0,
            error: 1.0,
            count: 1,
        };
        assert!((s.sqnr_db() - 20.0).abs() < 1e-12);
        assert!((s.relative_rms() - 0.1).abs() < 1e-12);
        // Uniform logits over 4 classes: nll = ln 4.
        assert!((nll(&[1.0, 1.0, 1.0, 1.0], 2) - 4f64.ln()).abs() < 1e-12);
        let mut r = Report::default();
        r.ops.insert("vision:a".into(), s.clone());
        r.ops.insert(
            "text:b".into(),
            ErrorStats {
                order: 1,
                signal: 1.0,
                error: 1.0,
                count: 1,
            },
        );
        assert_eq!(r.worst(1)[0].0, "text:b");
        let svg = svg_chart(&r, "t <x>");
        assert!(
            svg.starts_with("<svg")
                && svg.contains("t &lt;x&gt;")
                && svg.matches("<rect").count() == 2
        );
    }
}
