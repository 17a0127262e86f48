//! Published (or measured) latencies, the cost model's predictions for them, and the fit of a
//! profile's free factors to the rows marked `fit`; rows marked `hold_out` only measure how well
//! the fitted model predicts what it was not fitted to.
//!
//! A measurement file (`profiles/<name>-published.json`, `profiles/<name>-measured.json`) lists
//! rows: what was measured (a reference convnet's whole graph, a vision encoder, time to first
//! token, a prefill, a decode step), on which model, at which scheme and shape, the latency, its
//! source, and its role.
//!
//! The fit minimises the mean squared log error (ratios, so a 1 ms convnet and a 1 s encoder
//! weigh alike) with Nelder-Mead over the logarithms of the factors, from a fixed neutral start,
//! so the result depends on the data alone. Efficiencies are capped at 1.

use super::cost::{call_time, NodeWork};
use super::predict::{decode_call, prefill_call, work, Target};
use super::profile::{Factors, Profile, FACTOR_NAMES};
use super::reference_nets;
use super::scheme::NpuScheme;
use crate::error::{Error, Result};
use crate::graph::Bindings;
use crate::models::presets;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// A reference convnet's whole graph (`model` names it).
    Graph,
    /// A vision encoder alone, pixels to features.
    Encoder,
    /// Time to first token: images, connector, prefill.
    Ttft,
    /// The prompt's prefill alone.
    Prefill,
    /// One decode step at `context`.
    Decode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Fit,
    HoldOut,
}

/// One measured latency.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    pub label: String,
    pub what: What,
    /// A reference net (`what: graph`), a preset, or a vision preset.
    pub model: String,
    pub scheme: String,
    #[serde(default)]
    pub image_size: Option<usize>,
    #[serde(default)]
    pub prompt_tokens: Option<usize>,
    #[serde(default)]
    pub context: Option<usize>,
    #[serde(default)]
    pub chunk: Option<usize>,
    /// Latency in ms (a decode row: ms per token).
    pub ms: f64,
    pub role: Role,
    pub source: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementFile {
    pub profile: String,
    pub description: String,
    pub rows: Vec<Measurement>,
}

impl MeasurementFile {
    pub fn parse(text: &str) -> Result<Self> {
        let f: Self = serde_json::from_str(text)
            .map_err(|e| Error::input(format!("measurement file: {e}")))?;
        for r in &f.rows {
            if !(r.ms.is_finite() && r.ms > 0.0) {
                return Err(Error::input(format!("{}: ms must be > 0", r.label)));
            }
        }
        Ok(f)
    }

    /// The measurement file a built-in profile names.
    pub fn for_profile(p: &Profile) -> Result<Self> {
        let text = DATA
            .iter()
            .find(|(n, _)| *n == p.fit.data)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                Error::input(format!(
                    "profile {} names measurement file `{}`, which is not built in",
                    p.name, p.fit.data
                ))
            })?;
        Self::parse(text)
    }
}

/// Built-in measurement files.
pub const DATA: &[(&str, &str)] = &[
    (
        "sa8295p-published.json",
        include_str!("../../profiles/sa8295p-published.json"),
    ),
    (
        "zen5-2c-measured.json",
        include_str!("../../profiles/zen5-2c-measured.json"),
    ),
];

/// A measurement as the graph calls it costs: `(work of one call, calls)`.
pub struct Prepared {
    pub row: Measurement,
    calls: Vec<(Vec<NodeWork>, f64)>,
}

impl Prepared {
    pub fn new(row: &Measurement, p: &Profile) -> Result<Self> {
        let scheme = NpuScheme::parse(&row.scheme)?;
        let mut calls = Vec::new();
        let ctx = |r: &Measurement| r.context.unwrap_or(4096);
        match row.what {
            What::Graph => {
                let g = reference_nets::build(&row.model)?;
                calls.push((work(&g, Bindings::default(), p, scheme.vision), 1.0));
            }
            What::Encoder => {
                let t = target(&row.model)?;
                let size = row
                    .image_size
                    .or_else(|| t.vision().map(|v| v.image_size()))
                    .unwrap_or(0);
                let (enc, _) = t.vision_graphs(size)?.ok_or_else(|| {
                    Error::input(format!(
                        "{}: {} has no vision encoder",
                        row.label, row.model
                    ))
                })?;
                calls.push((work(&enc, Bindings::default(), p, scheme.vision), 1.0));
            }
            What::Ttft | What::Prefill | What::Decode => {
                let t = target(&row.model)?;
                let text = t.text_graph()?.ok_or_else(|| {
                    Error::input(format!(
                        "{}: {} has no language model",
                        row.label, row.model
                    ))
                })?;
                let context = ctx(row);
                let mut prompt = row.prompt_tokens.unwrap_or(0);
                if row.what == What::Ttft {
                    let size = row
                        .image_size
                        .or_else(|| t.vision().map(|v| v.image_size()))
                        .unwrap_or(0);
                    let (enc, conn) = t.vision_graphs(size)?.ok_or_else(|| {
                        Error::input(format!(
                            "{}: {} has no vision encoder",
                            row.label, row.model
                        ))
                    })?;
                    let tokens = super::predict::image_tokens_of(&enc)?;
                    calls.push((work(&enc, Bindings::default(), p, scheme.vision), 1.0));
                    if let Some(conn) = conn {
                        let b = Bindings {
                            seq: tokens,
                            past: 0,
                        };
                        calls.push((work(&conn, b, p, scheme.connector), 1.0));
                    }
                    prompt += tokens;
                }
                if row.what == What::Decode {
                    calls.push((work(&text, decode_call(context), p, scheme.text), 1.0));
                } else {
                    let (b, n) = prefill_call(p, prompt, context, row.chunk.unwrap_or(128));
                    calls.push((work(&text, b, p, scheme.text), n as f64));
                }
            }
        }
        Ok(Self {
            row: row.clone(),
            calls,
        })
    }

    /// Predicted ms under `p`'s factors.
    pub fn predict_ms(&self, p: &Profile) -> Result<f64> {
        let mut t = 0.0;
        for (w, n) in &self.calls {
            t += n * call_time(w, p)?;
        }
        Ok(t * 1e3)
    }
}

/// A preset (whole model) or a vision preset as a cost target.
pub fn target(name: &str) -> Result<Target> {
    if presets::VISION_PRESETS.contains(&name) {
        return Ok(Target::Vision(presets::vision_preset(name)?.0));
    }
    Ok(Target::Model(Box::new(presets::preset_config(name)?)))
}

/// One row's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct RowResult {
    pub label: String,
    pub role: Role,
    pub measured_ms: f64,
    pub predicted_ms: f64,
    /// predicted / measured.
    pub ratio: f64,
    pub source: String,
}

/// The fit's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct FitReport {
    pub profile: String,
    pub factors: std::collections::BTreeMap<String, Factors>,
    pub rows: Vec<RowResult>,
    /// Geometric-mean absolute error (exp of the mean |ln ratio|, minus 1) over fit and hold-out
    /// rows, in percent.
    pub fit_error_pct: f64,
    pub hold_out_error_pct: f64,
    /// Factors the fit rows do not constrain (doubling or halving them moves the rows' error by
    /// < 0.1 %): they sit at the prior.
    pub unconstrained: Vec<String>,
}

impl FitReport {
    /// The rows as chart points (measured on x, predicted on y, fit vs hold-out).
    pub fn chart_points(&self) -> Vec<super::chart::Point> {
        use super::chart::{Point, Role as ChartRole};
        self.rows
            .iter()
            .map(|r| Point {
                label: r.label.clone(),
                published_ms: r.measured_ms,
                predicted_ms: r.predicted_ms,
                role: match r.role {
                    Role::Fit => ChartRole::Fit,
                    Role::HoldOut => ChartRole::HoldOut,
                },
            })
            .collect()
    }
}

fn objective(rows: &[Prepared], p: &Profile) -> f64 {
    let mut s = 0.0;
    let mut n = 0.0;
    for r in rows.iter().filter(|r| r.row.role == Role::Fit) {
        match r.predict_ms(p) {
            Ok(ms) => {
                let e = (ms / r.row.ms).ln();
                s += e * e;
                n += 1.0;
            }
            Err(_) => return f64::INFINITY,
        }
    }
    if n == 0.0 {
        f64::INFINITY
    } else {
        s / n
    }
}

/// `p` with its factor families set from `x` (logarithms; efficiencies capped at 1).
fn with_params(p: &Profile, families: &[String], x: &[f64]) -> Profile {
    let mut q = p.clone();
    for (i, fam) in families.iter().enumerate() {
        let mut v = [0.0; 8];
        for (j, name) in FACTOR_NAMES.iter().enumerate() {
            let e = x[i * 8 + j].exp();
            v[j] = if name.ends_with("_s") { e } else { e.min(1.0) };
        }
        q.factors.insert(fam.clone(), Factors::from_vec(v));
    }
    q
}

/// The neutral start, and the prior the fit falls back to for factors its rows do not
/// constrain: half efficiency, 100 us per graph, 1 us per node.
pub const START: [f64; 8] = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1e-4, 1e-6];

/// Weight of the prior: a factor 2x away from it costs 0.05 % of squared log error, so factors
/// the rows constrain follow the rows.
const PRIOR_WEIGHT: f64 = 1e-3;

/// Nelder-Mead minimisation of `f` from `x0` (deterministic).
fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, x0: &[f64], iters: usize) -> Vec<f64> {
    let n = x0.len();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((x0.to_vec(), f(x0)));
    for i in 0..n {
        let mut x = x0.to_vec();
        x[i] += 0.7;
        let v = f(&x);
        simplex.push((x, v));
    }
    for _ in 0..iters {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let centroid: Vec<f64> = (0..n)
            .map(|j| simplex[..n].iter().map(|s| s.0[j]).sum::<f64>() / n as f64)
            .collect();
        let worst = simplex[n].clone();
        let at = |t: f64| -> Vec<f64> {
            (0..n)
                .map(|j| centroid[j] + t * (worst.0[j] - centroid[j]))
                .collect()
        };
        let xr = at(-1.0);
        let fr = f(&xr);
        if fr < simplex[0].1 {
            let xe = at(-2.0);
            let fe = f(&xe);
            simplex[n] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < simplex[n - 1].1 {
            simplex[n] = (xr, fr);
        } else {
            let xc = if fr < worst.1 { at(-0.5) } else { at(0.5) };
            let fc = f(&xc);
            if fc < worst.1.min(fr) {
                simplex[n] = (xc, fc);
            } else {
                let best = simplex[0].0.clone();
                for s in simplex.iter_mut().skip(1) {
                    let x: Vec<f64> = (0..n).map(|j| best[j] + 0.5 * (s.0[j] - best[j])).collect();
                    let v = f(&x);
                    *s = (x, v);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex.swap_remove(0).0
}

/// Prepares every row of `data` for `p`.
pub fn prepare(data: &MeasurementFile, p: &Profile) -> Result<Vec<Prepared>> {
    data.rows
        .iter()
        .map(|r| Prepared::new(r, p).map_err(|e| Error::input(format!("row `{}`: {e}", r.label))))
        .collect()
}

/// Fits `p`'s factor families to the `fit` rows of `rows` and reports every row.
pub fn fit(p: &Profile, rows: &[Prepared]) -> Result<(Profile, FitReport)> {
    let families = p.families();
    let x0: Vec<f64> = families.iter().flat_map(|_| START.map(f64::ln)).collect();
    let prior: Vec<f64> = families.iter().flat_map(|_| START.map(f64::ln)).collect();
    let penalty = |x: &[f64]| -> f64 {
        PRIOR_WEIGHT
            * x.iter()
                .zip(&prior)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
    };
    let data = |x: &[f64]| objective(rows, &with_params(p, &families, x));
    let f = |x: &[f64]| data(x) + penalty(x);
    // Restarts from the best point shake the simplex out of a collapsed shape.
    let mut x = x0;
    for _ in 0..6 {
        x = nelder_mead(&f, &x, 1500);
    }
    let fitted = with_params(p, &families, &x);
    let base = data(&x);
    let mut unconstrained = Vec::new();
    for (i, fam) in families.iter().enumerate() {
        for (j, name) in FACTOR_NAMES.iter().enumerate() {
            let mut y = x.clone();
            y[i * 8 + j] += std::f64::consts::LN_2;
            let mut z = x.clone();
            z[i * 8 + j] -= std::f64::consts::LN_2;
            let moved = (data(&y) - base).abs().max((data(&z) - base).abs());
            if moved <= 1e-3 * base.max(1e-12) {
                unconstrained.push(format!("{fam}.{name}"));
            }
        }
    }
    let report = evaluate(&fitted, rows, unconstrained)?;
    Ok((fitted, report))
}

/// Every row's prediction under `p` as it is.
pub fn evaluate(p: &Profile, rows: &[Prepared], unconstrained: Vec<String>) -> Result<FitReport> {
    let mut out = Vec::new();
    for r in rows {
        let predicted = r.predict_ms(p)?;
        out.push(RowResult {
            label: r.row.label.clone(),
            role: r.row.role,
            measured_ms: r.row.ms,
            predicted_ms: predicted,
            ratio: predicted / r.row.ms,
            source: r.row.source.clone(),
        });
    }
    let err = |role: Role| {
        let v: Vec<f64> = out
            .iter()
            .filter(|r| r.role == role)
            .map(|r| r.ratio.ln().abs())
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            100.0 * ((v.iter().sum::<f64>() / v.len() as f64).exp() - 1.0)
        }
    };
    Ok(FitReport {
        profile: p.name.clone(),
        factors: p.factors.clone(),
        fit_error_pct: err(Role::Fit),
        hold_out_error_pct: err(Role::HoldOut),
        rows: out,
        unconstrained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npu::profile::BUILTIN;

    /// The committed factors are what the committed measurements give: refitting each built-in
    /// profile from the neutral start reproduces them (nobody tuned them by hand).
    #[test]
    fn builtin_factors_are_the_fit_of_their_data() {
        for (name, _) in BUILTIN {
            let p = Profile::load(name).unwrap();
            let data = MeasurementFile::for_profile(&p).unwrap();
            assert!(data.rows.iter().any(|r| r.role == Role::Fit));
            assert!(data.rows.iter().any(|r| r.role == Role::HoldOut));
            let rows = prepare(&data, &p).unwrap();
            let (fitted, report) = fit(&p, &rows).unwrap();
            for (family, f) in &p.factors {
                let g = fitted.factors[family];
                for ((name, a), b) in FACTOR_NAMES.iter().zip(f.to_vec()).zip(g.to_vec()) {
                    assert!(
                        (a - b).abs() <= 1e-3 * a.abs().max(b.abs()) + 1e-12,
                        "{}: {family}.{name} committed {a}, refit {b} (run `{}`)",
                        p.name,
                        p.fit.command
                    );
                }
            }
            assert!(report.fit_error_pct.is_finite() && report.hold_out_error_pct.is_finite());
        }
    }

    #[test]
    fn bad_measurement_files() {
        let p = Profile::load("sa8295p").unwrap();
        assert!(MeasurementFile::parse("[]").is_err());
        let zero = r#"{"profile": "x", "description": "", "rows": [{"label": "a", "what": "graph",
            "model": "resnet18", "scheme": "w8a8", "ms": 0, "role": "fit", "source": ""}]}"#;
        let e = MeasurementFile::parse(zero).unwrap_err().to_string();
        assert!(e.contains("ms must be > 0"), "{e}");
        let unknown = zero
            .replace("\"ms\": 0", "\"ms\": 1")
            .replace("resnet18", "resnet9000");
        let f = MeasurementFile::parse(&unknown).unwrap();
        let e = prepare(&f, &p).err().unwrap().to_string();
        assert!(e.contains("resnet9000"), "{e}");
    }
}
