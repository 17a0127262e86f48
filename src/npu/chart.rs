//! SVG charts of the cost model: predicted vs published latencies, per-node time breakdowns.
//!
//! Both charts are hand-written standalone SVG documents (plain `format!`, no crates, no
//! scripts, no external fonts) in the style of `quant::report::svg_chart`, so that they open in a
//! browser and render on GitHub. Every text is escaped; every number that reaches the output is
//! finite, and an empty input gives a valid document with a "no data" note.
//!
//! * [`predicted_vs_published`]: log-log scatter of predicted against published latency, with the
//!   y = x diagonal, dashed 0.5x and 2x guides, decade gridlines and a marker per [`Role`].
//! * [`time_breakdown`]: horizontal stacked bars of time per category (op kind), absolute ms or
//!   scaled to 100 % per bar ([`BarScale`]).

use std::fmt::Write as _;

/// Whether a measurement was used to fit the cost model's free factors or held out to test it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Fit,
    HoldOut,
}

/// One published measurement and the model's prediction of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Point {
    pub label: String,
    pub published_ms: f64,
    pub predicted_ms: f64,
    pub role: Role,
}

/// One stacked bar: a label and its time per category, `(category, ms)`, drawn in this order.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Breakdown {
    pub label: String,
    pub segments: Vec<(String, f64)>,
}

/// How [`time_breakdown`] scales its bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BarScale {
    /// Bar lengths proportional to milliseconds, on one axis shared by all rows.
    Absolute,
    /// Every bar spans the full width (100 %); segments show shares of the row's total.
    Normalized,
}

const FIT_COLOUR: &str = "#1f77b4";
const HOLD_OUT_COLOUR: &str = "#d62728";
/// Category colours (Tableau 10), assigned in order of first appearance over all rows.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];
/// Rough advance width of one character, in units of the font size (sans-serif, generous).
const CHAR_EM: f64 = 0.6;
/// Labels longer than this many characters are shortened on the chart (tooltips keep them whole).
const SHORT_LABEL_CHARS: usize = 28;

/// Escapes text for XML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn text_width(s: &str, font_size: f64) -> f64 {
    s.chars().count() as f64 * font_size * CHAR_EM
}

fn short_label(s: &str) -> String {
    if s.chars().count() <= SHORT_LABEL_CHARS {
        s.to_string()
    } else {
        let head: String = s.chars().take(SHORT_LABEL_CHARS - 1).collect();
        format!("{}…", head.trim_end())
    }
}

/// Milliseconds with about three significant digits; non-finite values spelled out.
fn fmt_ms(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 1e-3 {
        let decimals = (2 - a.log10().floor() as i32) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.2e}")
    }
}

/// An axis tick value without trailing zeros: "0", "2.5", "50".
fn fmt_tick(v: f64) -> String {
    format!("{}", (v * 1e6).round() / 1e6)
}

/// Black or white, whichever reads better on the `#rrggbb` colour `bg`.
fn text_on(bg: &str) -> &'static str {
    let c = |i: usize| f64::from(u8::from_str_radix(&bg[i..i + 2], 16).unwrap_or(0)) / 255.0;
    let luma = 0.299 * c(1) + 0.587 * c(3) + 0.114 * c(5);
    if luma > 0.6 {
        "#222"
    } else {
        "white"
    }
}

/// Tick label of the decade 10^e: "0.01", "1", "1000", or "1e6" outside 1e-4..=1e5.
fn decade_label(e: i32) -> String {
    match e {
        0..=5 => format!("{}", 10u64.pow(e as u32)),
        -4..=-1 => format!("{:.*}", (-e) as usize, 10f64.powi(e)),
        _ => format!("1e{e}"),
    }
}

fn svg_open(w: f64, h: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    )
}

/// Splits `items` joined by "; " after `prefix` into lines of at most about `max_chars`.
fn wrap_list(prefix: &str, items: &[String], max_chars: usize) -> Vec<String> {
    let mut lines = vec![prefix.to_string()];
    for (i, item) in items.iter().enumerate() {
        let sep = if i + 1 < items.len() { "; " } else { "" };
        let last = lines.last_mut().expect("non-empty");
        if last.chars().count() + item.chars().count() > max_chars && last.len() > prefix.len() {
            lines.push(format!("  {item}{sep}"));
        } else {
            last.push_str(item);
            last.push_str(sep);
        }
    }
    lines
}

/// A decade-aligned logarithmic axis: value `10^lo` maps to pixel `px_lo`, `10^hi` to `px_hi`
/// (for a y axis `px_lo` is the bottom, larger, pixel).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LogAxis {
    pub lo: i32,
    pub hi: i32,
    pub px_lo: f64,
    pub px_hi: f64,
}

impl LogAxis {
    /// The smallest whole-decade range covering `[min, max]` (both > 0), at least one decade.
    pub fn covering(min: f64, max: f64, px_lo: f64, px_hi: f64) -> Self {
        let lo = min.log10().floor() as i32;
        let hi = (max.log10().ceil() as i32).max(lo + 1);
        Self {
            lo,
            hi,
            px_lo,
            px_hi,
        }
    }

    pub fn map(&self, v: f64) -> f64 {
        let t = (v.log10() - self.lo as f64) / (self.hi - self.lo) as f64;
        self.px_lo + t * (self.px_hi - self.px_lo)
    }
}

/// Axis-aligned box `[x0, x1] × [y0, y1]` in pixels.
#[derive(Clone, Copy, Debug)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn overlap(&self, o: &Rect) -> f64 {
        let w = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0.0);
        let h = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0.0);
        w * h
    }
    fn outside(&self, bounds: &Rect) -> f64 {
        (self.x1 - self.x0) * (self.y1 - self.y0) - self.overlap(bounds)
    }
}

/// Places a label of `width` × `font` next to the marker at (x, y), trying positions around it
/// and taking the first that hits nothing in `taken` and stays in `bounds` (else the least bad).
/// Returns the text anchor point, the `text-anchor` value and the label's box.
fn place_label(
    x: f64,
    y: f64,
    width: f64,
    font: f64,
    taken: &[Rect],
    bounds: &Rect,
) -> (f64, f64, &'static str, Rect) {
    // Text box relative to its baseline ty: [ty - 0.8 font, ty + 0.25 font].
    let gap = 7.0;
    let mid = y + 0.3 * font; // baseline that centres the text on the marker
    let above = y - 6.0 - 0.25 * font; // box bottom just above the marker
    let below = y + 6.0 + 0.8 * font; // box top just below the marker
    let line = 1.1 * font;
    // (baseline x, baseline y, anchor); the order is the preference.
    let candidates: [(f64, f64, &str); 14] = [
        (x + gap, mid, "start"),
        (x + gap - 2.0, above, "start"),
        (x + gap - 2.0, below, "start"),
        (x - gap, mid, "end"),
        (x - gap + 2.0, above, "end"),
        (x - gap + 2.0, below, "end"),
        (x, above, "middle"),
        (x, below, "middle"),
        // Second ring, one text line further out.
        (x, above - line, "middle"),
        (x, below + line, "middle"),
        (x + gap - 2.0, above - line, "start"),
        (x + gap - 2.0, below + line, "start"),
        (x - gap + 2.0, above - line, "end"),
        (x - gap + 2.0, below + line, "end"),
    ];
    let mut best = None;
    for (tx, ty, anchor) in candidates {
        let x0 = match anchor {
            "start" => tx,
            "end" => tx - width,
            _ => tx - width / 2.0,
        };
        let r = Rect {
            x0,
            y0: ty - font * 0.8,
            x1: x0 + width,
            y1: ty + font * 0.25,
        };
        let cost = taken.iter().map(|t| r.overlap(t)).sum::<f64>() + 4.0 * r.outside(bounds);
        if cost == 0.0 {
            return (tx, ty, anchor, r);
        }
        if best.as_ref().is_none_or(|b: &(f64, _)| cost < b.0) {
            best = Some((cost, (tx, ty, anchor, r)));
        }
    }
    best.expect("candidates").1
}

fn marker(role: Role, x: f64, y: f64) -> String {
    match role {
        Role::Fit => format!(
            "<circle cx=\"{x:.2}\" cy=\"{y:.2}\" r=\"4.5\" fill=\"{FIT_COLOUR}\" stroke=\"white\" stroke-width=\"0.8\"/>"
        ),
        Role::HoldOut => format!(
            "<path d=\"M {:.2} {y:.2} L {x:.2} {:.2} L {:.2} {y:.2} L {x:.2} {:.2} Z\" fill=\"white\" stroke=\"{HOLD_OUT_COLOUR}\" stroke-width=\"1.8\"/>",
            x - 5.5,
            y - 5.5,
            x + 5.5,
            y + 5.5
        ),
    }
}

/// Log-log scatter of predicted (y) against published (x) latency in milliseconds.
///
/// Both axes share one decade-aligned range chosen from the data, so the solid y = x diagonal is
/// at 45° and the dashed 0.5x / 2x guides bound "within a factor of two". Fit points are filled
/// blue circles, held-out points hollow red diamonds; each carries a short label placed beside it
/// (avoiding other markers and labels where it can) and a `<title>` tooltip with the full label,
/// both latencies and the predicted/published ratio. Points with a non-finite or non-positive
/// latency are not drawn but listed in a footnote "not plotted: ...".
pub fn predicted_vs_published(points: &[Point], title: &str) -> String {
    let ok = |v: f64| v.is_finite() && v > 0.0;
    let (shown, skipped): (Vec<&Point>, Vec<&Point>) = points
        .iter()
        .partition(|p| ok(p.published_ms) && ok(p.predicted_ms));
    let skipped: Vec<String> = skipped
        .iter()
        .map(|p| {
            format!(
                "{} (published {}, predicted {})",
                p.label,
                fmt_ms(p.published_ms),
                fmt_ms(p.predicted_ms)
            )
        })
        .collect();

    let (left, top, plot, legend_w, bottom) = (70.0, 40.0, 560.0, 190.0, 56.0);
    let foot = if skipped.is_empty() {
        Vec::new()
    } else {
        wrap_list("not plotted: ", &skipped, 110)
    };
    let w = left + plot + legend_w;
    let h = top + plot + bottom + 15.0 * foot.len() as f64;
    let mut out = svg_open(w, h);
    let _ = writeln!(
        out,
        "<text x=\"{left}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    let foot_y = top + plot + bottom;
    for (i, line) in foot.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\">{}</text>",
            foot_y + 15.0 * i as f64,
            escape(line)
        );
    }
    if shown.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\" fill=\"#777\">no data</text>\n</svg>",
            left + plot / 2.0,
            top + plot / 2.0
        );
        return out;
    }

    let (min, max) = shown.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
        (
            lo.min(p.published_ms).min(p.predicted_ms),
            hi.max(p.published_ms).max(p.predicted_ms),
        )
    });
    let xa = LogAxis::covering(min, max, left, left + plot);
    let ya = LogAxis::covering(min, max, top + plot, top);
    let (x0, x1, y0, y1) = (left, left + plot, top + plot, top);
    let (vlo, vhi) = (10f64.powi(xa.lo), 10f64.powi(xa.hi));

    // Gridlines: light minor lines at 2..9 x 10^e (when there is room), darker at decades.
    let decades = xa.hi - xa.lo;
    out += "<g stroke-width=\"1\">\n";
    for e in xa.lo..xa.hi {
        if decades > 6 {
            break;
        }
        for m in 2..10 {
            let v = m as f64 * 10f64.powi(e);
            let (x, y) = (xa.map(v), ya.map(v));
            let _ = writeln!(
                out,
                "<line x1=\"{x:.2}\" x2=\"{x:.2}\" y1=\"{y0}\" y2=\"{y1}\" stroke=\"#f0f0f0\"/><line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y:.2}\" y2=\"{y:.2}\" stroke=\"#f0f0f0\"/>"
            );
        }
    }
    for e in xa.lo..=xa.hi {
        let v = 10f64.powi(e);
        let (x, y) = (xa.map(v), ya.map(v));
        let label = decade_label(e);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.2}\" x2=\"{x:.2}\" y1=\"{y0}\" y2=\"{y1}\" stroke=\"#d0d0d0\"/><line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y:.2}\" y2=\"{y:.2}\" stroke=\"#d0d0d0\"/>\n\
             <text x=\"{x:.2}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text><text x=\"{:.1}\" y=\"{:.2}\" text-anchor=\"end\">{label}</text>",
            y0 + 16.0,
            x0 - 6.0,
            y + 4.0
        );
    }
    out += "</g>\n";
    let _ = writeln!(
        out,
        "<rect x=\"{x0}\" y=\"{y1}\" width=\"{plot}\" height=\"{plot}\" fill=\"none\" stroke=\"#888\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\">published latency (ms)</text>\n\
         <text transform=\"translate({:.1} {:.1}) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">predicted latency (ms)</text>",
        left + plot / 2.0,
        y0 + 36.0,
        left - 48.0,
        top + plot / 2.0
    );

    // Guides: y = x, y = 2x and y = x/2, clipped to the square.
    let guide = |a: (f64, f64), b: (f64, f64), dash: &str, label: &str, out: &mut String| {
        let (ax, ay, bx, by) = (xa.map(a.0), ya.map(a.1), xa.map(b.0), ya.map(b.1));
        let _ = writeln!(
            out,
            "<line x1=\"{ax:.2}\" y1=\"{ay:.2}\" x2=\"{bx:.2}\" y2=\"{by:.2}\" stroke=\"#666\" stroke-width=\"1\"{dash}/>\
             <text x=\"{:.2}\" y=\"{:.2}\" font-size=\"10\" fill=\"#666\" text-anchor=\"end\">{label}</text>",
            bx - 4.0,
            by + 12.0
        );
    };
    guide((vlo, vlo), (vhi, vhi), "", "y = x", &mut out);
    let dashed = " stroke-dasharray=\"5 4\"";
    guide((vlo, 2.0 * vlo), (vhi / 2.0, vhi), dashed, "2×", &mut out);
    guide((2.0 * vlo, vlo), (vhi, vhi / 2.0), dashed, "0.5×", &mut out);

    // Markers, each with its tooltip; then the labels, placed clear of every marker.
    let pos: Vec<(f64, f64)> = shown
        .iter()
        .map(|p| (xa.map(p.published_ms), ya.map(p.predicted_ms)))
        .collect();
    let mut taken: Vec<Rect> = pos
        .iter()
        .map(|&(x, y)| Rect {
            x0: x - 5.5,
            y0: y - 5.5,
            x1: x + 5.5,
            y1: y + 5.5,
        })
        .collect();
    let bounds = Rect {
        x0: x0 + 2.0,
        y0: y1 + 2.0,
        x1: x1 - 2.0,
        y1: y0 - 2.0,
    };
    let font = 10.0;
    let mut labels = String::new();
    for (p, &(x, y)) in shown.iter().zip(&pos) {
        let tip = format!(
            "{}\npublished: {} ms\npredicted: {} ms\nratio predicted/published: {:.2}",
            p.label,
            fmt_ms(p.published_ms),
            fmt_ms(p.predicted_ms),
            p.predicted_ms / p.published_ms
        );
        let _ = writeln!(
            out,
            "<g><title>{}</title>{}</g>",
            escape(&tip),
            marker(p.role, x, y)
        );
        let short = short_label(&p.label);
        let (tx, ty, anchor, r) =
            place_label(x, y, text_width(&short, font), font, &taken, &bounds);
        taken.push(r);
        let _ = writeln!(
            labels,
            "<text x=\"{tx:.2}\" y=\"{ty:.2}\" text-anchor=\"{anchor}\" font-size=\"{font}\" fill=\"#333\" stroke=\"white\" stroke-width=\"3\" stroke-opacity=\"0.85\" paint-order=\"stroke\"><title>{}</title>{}</text>",
            escape(&tip),
            escape(&short)
        );
    }
    out += &labels;

    // Legend, right of the plot.
    let lx = x1 + 20.0;
    let n_fit = shown.iter().filter(|p| p.role == Role::Fit).count();
    let n_hold = shown.len() - n_fit;
    let _ = writeln!(
        out,
        "<g font-size=\"11\">\n\
         {}<text x=\"{:.1}\" y=\"{:.1}\">fit ({n_fit})</text>\n\
         {}<text x=\"{:.1}\" y=\"{:.1}\">held out ({n_hold})</text>\n\
         <line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#666\"/><text x=\"{:.1}\" y=\"{:.1}\">predicted = published</text>\n\
         <line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#666\"{dashed}/><text x=\"{:.1}\" y=\"{:.1}\">off by 2× either way</text>\n\
         <text x=\"{lx:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#777\">hover a point for details</text>\n</g>",
        marker(Role::Fit, lx + 9.0, top + 10.0),
        lx + 24.0,
        top + 14.0,
        marker(Role::HoldOut, lx + 9.0, top + 30.0),
        lx + 24.0,
        top + 34.0,
        lx + 18.0,
        top + 50.0,
        top + 50.0,
        lx + 24.0,
        top + 54.0,
        lx + 18.0,
        top + 70.0,
        top + 70.0,
        lx + 24.0,
        top + 74.0,
        top + 94.0,
    );
    out += "</svg>\n";
    out
}

/// One drawn segment of a bar: category, left edge and width in pixels, ms.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Segment {
    pub category: String,
    pub x: f64,
    pub width: f64,
    pub ms: f64,
}

/// Lays out one bar from pixel `x0`: in [`BarScale::Normalized`] the segments fill `bar_width`;
/// in [`BarScale::Absolute`] each is `ms * px_per_ms` wide. Segments with a non-finite or
/// non-positive time are dropped (a row of no time gives no segment).
pub(crate) fn layout_bar(
    row: &Breakdown,
    scale: BarScale,
    x0: f64,
    bar_width: f64,
    px_per_ms: f64,
) -> Vec<Segment> {
    let kept: Vec<&(String, f64)> = row
        .segments
        .iter()
        .filter(|(_, ms)| ms.is_finite() && *ms > 0.0)
        .collect();
    let total: f64 = kept.iter().map(|(_, ms)| ms).sum();
    if total <= 0.0 || !total.is_finite() {
        return Vec::new();
    }
    let k = match scale {
        BarScale::Absolute => px_per_ms,
        BarScale::Normalized => bar_width / total,
    };
    let mut x = x0;
    kept.iter()
        .map(|(category, ms)| {
            let s = Segment {
                category: category.clone(),
                x,
                width: ms * k,
                ms: *ms,
            };
            x += s.width;
            s
        })
        .collect()
}

/// A "nice" axis step (1, 2 or 5 × 10^k) giving about `target` intervals up to `max`.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = max / target;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Horizontal stacked bars, one per [`Breakdown`] row, split into segments by category.
///
/// Each category keeps one colour across rows (a fixed palette in order of first appearance;
/// it cycles after ten categories) and appears once in the legend below the bars. The row's
/// total in ms is printed at the end of its bar, and every segment has a `<title>` tooltip with
/// category, ms and share of the row's total; segments wide enough also show the share inside.
/// `scale` picks [`BarScale::Absolute`] (one ms axis for all rows, bars comparable in length)
/// or [`BarScale::Normalized`] (every bar 100 % wide, for comparing the mix). Segments with a
/// non-finite or negative time are left out of bars and totals and listed in a footnote.
pub fn time_breakdown(rows: &[Breakdown], title: &str, scale: BarScale) -> String {
    let font = 11.0;
    let label_w = rows
        .iter()
        .map(|r| text_width(&r.label, font))
        .fold(100.0f64, f64::max)
        .min(320.0);
    let (left, top, bar_w, right, row_h, bar_h) = (label_w + 20.0, 62.0, 620.0, 90.0, 30.0, 20.0);
    let w = left + bar_w + right;

    let mut categories: Vec<&str> = Vec::new();
    let mut dropped = Vec::new();
    for r in rows {
        for (c, ms) in &r.segments {
            if !(ms.is_finite() && *ms >= 0.0) {
                dropped.push(format!("{} / {} ({})", r.label, c, fmt_ms(*ms)));
            } else if !categories.contains(&c.as_str()) {
                categories.push(c);
            }
        }
    }
    let colour = |c: &str| {
        let i = categories.iter().position(|k| *k == c).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let totals: Vec<f64> = rows
        .iter()
        .map(|r| {
            r.segments
                .iter()
                .filter(|(_, ms)| ms.is_finite() && *ms > 0.0)
                .map(|(_, ms)| ms)
                .sum()
        })
        .collect();
    let max_total = totals.iter().copied().fold(0.0f64, f64::max);

    // Legend geometry: swatch + name, wrapped to the chart width.
    let mut legend = Vec::new();
    let (mut lx, mut ly) = (left, 0.0);
    for c in &categories {
        let item_w = 18.0 + text_width(c, font) + 16.0;
        if lx + item_w > w - 10.0 && lx > left {
            lx = left;
            ly += 18.0;
        }
        legend.push((c, lx, ly));
        lx += item_w;
    }
    let legend_h = if categories.is_empty() {
        0.0
    } else {
        ly + 18.0
    };
    let bars_bottom = top + row_h * rows.len() as f64;
    let legend_top = bars_bottom + 14.0;
    let foot = if dropped.is_empty() {
        Vec::new()
    } else {
        wrap_list("left out: ", &dropped, 120)
    };
    let foot_top = legend_top + legend_h + 14.0;
    let h = (foot_top + 15.0 * foot.len() as f64).max(top + 80.0);

    let mut out = svg_open(w, h);
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    for (i, line) in foot.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\">{}</text>",
            foot_top + 15.0 * i as f64,
            escape(line)
        );
    }
    if rows.is_empty() || max_total <= 0.0 {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\" fill=\"#777\">no data</text>\n</svg>",
            left + bar_w / 2.0,
            top + 30.0
        );
        return out;
    }

    // Axis: ms ticks shared by all rows, or 0..100 %.
    let (axis_max, step, unit) = match scale {
        BarScale::Absolute => {
            let step = nice_step(max_total, 5.0);
            ((max_total / step).ceil() * step, step, " ms")
        }
        BarScale::Normalized => (100.0, 25.0, " %"),
    };
    let px_per_ms = bar_w / axis_max.max(f64::MIN_POSITIVE);
    let n_ticks = (axis_max / step).round() as usize;
    for i in 0..=n_ticks {
        let v = i as f64 * step;
        let x = left + v / axis_max * bar_w;
        let _ = writeln!(
            out,
            "<line x1=\"{x:.2}\" x2=\"{x:.2}\" y1=\"{:.1}\" y2=\"{bars_bottom:.1}\" stroke=\"#e0e0e0\"/><text x=\"{x:.2}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#555\">{}{unit}</text>",
            top - 6.0,
            top - 10.0,
            fmt_tick(v)
        );
    }

    for (i, (row, total)) in rows.iter().zip(&totals).enumerate() {
        let y = top + row_h * i as f64 + (row_h - bar_h) / 2.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + bar_h / 2.0 + 4.0,
            escape(&row.label)
        );
        let segs = layout_bar(row, scale, left, bar_w, px_per_ms);
        let mut end = left;
        for s in &segs {
            let share = 100.0 * s.ms / total;
            let _ = write!(
                out,
                "<rect x=\"{:.3}\" y=\"{y:.1}\" width=\"{:.3}\" height=\"{bar_h}\" fill=\"{}\"><title>{}: {} ms ({share:.1} %)</title></rect>",
                s.x,
                s.width,
                colour(&s.category),
                escape(&s.category),
                fmt_ms(s.ms)
            );
            let pct = format!("{share:.0}%");
            if s.width >= text_width(&pct, 9.0) + 6.0 {
                let _ = write!(
                    out,
                    "<text x=\"{:.2}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\" fill=\"{}\" pointer-events=\"none\">{pct}</text>",
                    s.x + s.width / 2.0,
                    y + bar_h / 2.0 + 3.0,
                    text_on(colour(&s.category))
                );
            }
            end = s.x + s.width;
        }
        let _ = writeln!(
            out,
            "\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{} ms</text>",
            end + 5.0,
            y + bar_h / 2.0 + 4.0,
            fmt_ms(*total)
        );
    }

    for (c, x, dy) in &legend {
        let ly = legend_top + dy;
        let _ = writeln!(
            out,
            "<rect x=\"{x:.1}\" y=\"{ly:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            colour(c),
            x + 16.0,
            ly + 10.0,
            escape(c)
        );
    }
    out += "</svg>\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal well-formedness check: one root `<svg>`, tags balanced and properly nested,
    /// attribute quotes paired, no raw `<` or stray `&` in text, only the XML entities.
    fn check_xml(s: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut roots = 0;
        let mut rest = s;
        let check_text = |t: &str| -> Result<(), String> {
            let mut t = t;
            while let Some(i) = t.find('&') {
                t = &t[i + 1..];
                let ok = ["amp;", "lt;", "gt;", "quot;", "apos;"]
                    .iter()
                    .any(|e| t.starts_with(e))
                    || (t.starts_with('#') && t.find(';').is_some_and(|j| j > 1));
                if !ok {
                    return Err(format!("bad entity near {:?}", &t[..t.len().min(20)]));
                }
            }
            if t.contains('>') {
                // '>' is legal in text but we always escape it.
                return Err("raw '>' in text".into());
            }
            Ok(())
        };
        while let Some(i) = rest.find('<') {
            check_text(&rest[..i])?;
            if !stack.is_empty() || rest[..i].trim().is_empty() {
            } else {
                return Err("text outside the root".into());
            }
            rest = &rest[i..];
            if rest.starts_with("<?") {
                let j = rest.find("?>").ok_or("unclosed <?")?;
                rest = &rest[j + 2..];
                continue;
            }
            if rest.starts_with("<!--") {
                let j = rest.find("-->").ok_or("unclosed comment")?;
                rest = &rest[j + 3..];
                continue;
            }
            // Find the closing '>' outside quotes.
            let mut in_q = false;
            let mut end = None;
            for (k, c) in rest.char_indices().skip(1) {
                match c {
                    '"' => in_q = !in_q,
                    '<' if !in_q => return Err("'<' inside a tag".into()),
                    '>' if !in_q => {
                        end = Some(k);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unclosed tag")?;
            let tag = &rest[1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("stray </{name}>"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
                return Err(format!("bad tag name {name:?}"));
            }
            for part in body.split('"').skip(1).step_by(2) {
                check_text(part)?;
            }
            if stack.is_empty() {
                roots += 1;
                if name != "svg" {
                    return Err(format!("root is <{name}>"));
                }
            }
            if !self_closing {
                stack.push(name);
            }
        }
        check_text(rest)?;
        if !rest.trim().is_empty() {
            return Err("text after the root".into());
        }
        if let Some(open) = stack.pop() {
            return Err(format!("<{open}> never closed"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(())
    }

    fn pt(label: &str, published_ms: f64, predicted_ms: f64, role: Role) -> Point {
        Point {
            label: label.into(),
            published_ms,
            predicted_ms,
            role,
        }
    }

    fn sample_points() -> Vec<Point> {
        vec![
            pt("MobileNetV5-300M 512 px", 9.1, 10.4, Role::Fit),
            pt("InternViT-300M 448 px", 140.0, 121.0, Role::Fit),
            pt("LFM2-1.2B decode @4096", 21.0, 26.5, Role::Fit),
            pt("LFM2-1.2B prefill 1k", 310.0, 262.0, Role::Fit),
            pt("MobileNetV5-300M 256 px", 3.1, 2.6, Role::HoldOut),
            pt("TTFT <AutoNeural> & co", 95.0, 180.0, Role::HoldOut),
            pt("LFM2-350M decode", 6.9, 7.3, Role::HoldOut),
            pt("Qwen2-VL-2B vision", 1350.0, 980.0, Role::HoldOut),
            pt("not measured", f64::NAN, 12.0, Role::HoldOut),
            pt("broken", 10.0, f64::INFINITY, Role::Fit),
            pt("zero", 0.0, 5.0, Role::Fit),
            pt("negative", 4.0, -1.0, Role::Fit),
        ]
    }

    fn sample_rows() -> Vec<Breakdown> {
        let r = |label: &str, s: &[(&str, f64)]| Breakdown {
            label: label.into(),
            segments: s.iter().map(|(c, ms)| (c.to_string(), *ms)).collect(),
        };
        vec![
            r(
                "MobileNetV5-300M 512 px",
                &[
                    ("conv2d", 5.2),
                    ("elementwise", 1.1),
                    ("norm", 0.8),
                    ("attention", 1.4),
                    ("overhead", 0.6),
                ],
            ),
            r(
                "InternViT-300M 512 px",
                &[
                    ("conv2d", 0.9),
                    ("linear", 62.0),
                    ("attention", 48.0),
                    ("softmax", 9.5),
                    ("norm", 4.2),
                    ("elementwise", 3.1),
                    ("overhead", 1.5),
                ],
            ),
            r(
                "LFM2-1.2B decode @4096",
                &[
                    ("linear", 17.5),
                    ("conv1d <short>", 0.9),
                    ("attention", 4.4),
                    ("norm", 0.5),
                    ("elementwise", 0.7),
                    ("overhead", 1.2),
                ],
            ),
        ]
    }

    #[test]
    fn checker_catches_broken_xml() {
        assert!(check_xml("<svg><g></g></svg>").is_ok());
        assert!(check_xml("<svg><g></svg>").is_err());
        assert!(check_xml("<svg><text>a < b</text></svg>").is_err());
        assert!(check_xml("<svg><text>a & b</text></svg>").is_err());
        assert!(check_xml("<svg><text a=\"x\">a &amp; b</text></svg>").is_ok());
        assert!(check_xml("<svg/><svg/>").is_err());
    }

    #[test]
    fn log_axis_maps_decades() {
        let a = LogAxis::covering(1.0, 100.0, 100.0, 300.0);
        assert_eq!((a.lo, a.hi), (0, 2));
        assert!((a.map(1.0) - 100.0).abs() < 1e-9);
        assert!((a.map(10.0) - 200.0).abs() < 1e-9, "10 ms halfway");
        assert!((a.map(100.0) - 300.0).abs() < 1e-9);
        // Inverted (y) axis: larger values go up.
        let y = LogAxis::covering(0.3, 40.0, 500.0, 100.0);
        assert_eq!((y.lo, y.hi), (-1, 2));
        assert!((y.map(1.0) - (500.0 - 400.0 / 3.0)).abs() < 1e-9);
        assert!(y.map(40.0) < y.map(10.0));
        // A single value still spans a decade.
        let s = LogAxis::covering(5.0, 5.0, 0.0, 1.0);
        assert_eq!((s.lo, s.hi), (0, 1));
    }

    #[test]
    fn number_formats() {
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(0), "1");
        assert_eq!(decade_label(3), "1000");
        assert_eq!(decade_label(7), "1e7");
        assert_eq!(fmt_tick(50.0), "50");
        assert_eq!(fmt_tick(2.5), "2.5");
        assert_eq!(fmt_tick(0.1 + 0.2), "0.3");
        assert_eq!(fmt_ms(0.01234), "0.0123");
        assert_eq!(fmt_ms(129.2), "129");
        assert_eq!(text_on("#edc948"), "#222");
        assert_eq!(text_on("#4e79a7"), "white");
        assert_eq!(short_label("short"), "short");
        assert_eq!(
            short_label(&"x".repeat(40)).chars().count(),
            SHORT_LABEL_CHARS
        );
    }

    #[test]
    fn scatter_wide_range() {
        let pts = [
            pt("tiny", 0.002, 0.003, Role::Fit),
            pt("huge", 2e6, 1e6, Role::HoldOut),
        ];
        let svg = predicted_vs_published(&pts, "wide");
        check_xml(&svg).unwrap();
        assert!(svg.contains(">0.001</text>") && svg.contains(">1e7</text>"));
        assert!(
            !svg.contains("#f0f0f0"),
            "no minor gridlines over ten decades"
        );
    }

    #[test]
    fn scatter_markers_at_the_right_pixel() {
        // Data 1..100 ms: a point at (10, 10) sits in the middle of the square plot.
        let pts = [
            pt("a", 1.0, 1.0, Role::Fit),
            pt("b", 100.0, 100.0, Role::Fit),
            pt("mid", 10.0, 10.0, Role::Fit),
        ];
        let svg = predicted_vs_published(&pts, "t");
        check_xml(&svg).unwrap();
        // plot: left 70, top 40, side 560 -> centre (350, 320).
        assert!(svg.contains("<circle cx=\"350.00\" cy=\"320.00\""), "{svg}");
        assert!(svg.contains("<circle cx=\"70.00\" cy=\"600.00\""));
        assert!(svg.contains("<circle cx=\"630.00\" cy=\"40.00\""));
        for t in [">1</text>", ">10</text>", ">100</text>"] {
            assert!(svg.contains(t), "tick {t}");
        }
    }

    #[test]
    fn scatter_escapes_skips_and_lists() {
        let svg = predicted_vs_published(&sample_points(), "Cost model <v1> & fit");
        check_xml(&svg).unwrap();
        assert!(svg.contains("Cost model &lt;v1&gt; &amp; fit"));
        assert!(svg.contains("TTFT &lt;AutoNeural&gt; &amp; co"));
        assert!(!svg.contains("NaN\"") && !svg.contains("inf\""));
        // The footnote may wrap over several lines.
        let foot: String = svg
            .lines()
            .filter(|l| l.contains("fill=\"#555\""))
            .collect();
        assert!(foot.contains(">not plotted: "));
        for name in ["not measured", "broken", "zero", "negative"] {
            assert!(foot.contains(name), "{name} listed");
        }
        assert!(!foot.contains("LFM2-350M"));
        assert_eq!(
            svg.matches("<circle").count(),
            4 + 1,
            "4 fit points + legend"
        );
        assert_eq!(
            svg.matches("<path").count(),
            4 + 1,
            "4 held-out points + legend"
        );
        // Decades from 1 to 10000 ms, chosen from the data.
        for t in [">1</text>", ">1000</text>", ">10000</text>"] {
            assert!(svg.contains(t), "tick {t}");
        }
        assert!(!svg.contains(">0.1</text>"));
        assert!(svg.contains("ratio predicted/published: 1.89"));
    }

    #[test]
    fn empty_inputs_give_a_note() {
        for svg in [
            predicted_vs_published(&[], "empty"),
            predicted_vs_published(&[pt("x", f64::NAN, 1.0, Role::Fit)], "all bad"),
            time_breakdown(&[], "empty", BarScale::Absolute),
            time_breakdown(&[], "empty", BarScale::Normalized),
            time_breakdown(
                &[Breakdown {
                    label: "nothing".into(),
                    segments: vec![],
                }],
                "no segments",
                BarScale::Normalized,
            ),
        ] {
            check_xml(&svg).unwrap();
            assert!(svg.contains(">no data</text>"));
            assert!(svg.contains("viewBox=\"0 0 "));
        }
        let svg = predicted_vs_published(&[pt("x", f64::NAN, 1.0, Role::Fit)], "all bad");
        assert!(svg.contains("not plotted: x (published NaN, predicted 1.00)"));
    }

    #[test]
    fn labels_do_not_overlap_when_there_is_room() {
        // A tight cluster: every label must find a free spot among the eight candidates.
        let pts: Vec<Point> = (0..6)
            .map(|i| pt(&format!("p{i}"), 10.0 * 1.02f64.powi(i), 10.0, Role::Fit))
            .chain([
                pt("lo", 1.0, 1.0, Role::Fit),
                pt("hi", 100.0, 100.0, Role::Fit),
            ])
            .collect();
        let svg = predicted_vs_published(&pts, "cluster");
        check_xml(&svg).unwrap();
        let boxes: Vec<(f64, f64, f64, f64)> = svg
            .lines()
            .filter(|l| l.starts_with("<text") && l.contains("fill=\"#333\""))
            .map(|l| {
                let num = |key: &str| -> f64 {
                    let i = l.find(key).unwrap() + key.len();
                    l[i..].split('"').next().unwrap().parse().unwrap()
                };
                let (x, y) = (num(" x=\""), num(" y=\""));
                let w = 2.0 * 10.0 * CHAR_EM;
                let x0 = if l.contains("\"end\"") {
                    x - w
                } else if l.contains("\"middle\"") {
                    x - w / 2.0
                } else {
                    x
                };
                (x0, y - 8.0, x0 + w, y + 2.5)
            })
            .collect();
        assert_eq!(boxes.len(), pts.len());
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                let ov =
                    (a.2.min(b.2) - a.0.max(b.0)).max(0.0) * (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
                assert!(ov < 1e-9, "labels overlap: {a:?} {b:?}");
            }
        }
    }

    #[test]
    fn breakdown_widths() {
        let rows = sample_rows();
        for row in &rows {
            let segs = layout_bar(row, BarScale::Normalized, 50.0, 620.0, 0.0);
            let sum: f64 = segs.iter().map(|s| s.width).sum();
            assert!((sum - 620.0).abs() < 1e-9, "normalized bar fills its width");
            for pair in segs.windows(2) {
                assert!(
                    (pair[0].x + pair[0].width - pair[1].x).abs() < 1e-9,
                    "contiguous"
                );
            }
        }
        let k = 3.5;
        let segs = layout_bar(&rows[1], BarScale::Absolute, 50.0, 620.0, k);
        let total: f64 = rows[1].segments.iter().map(|s| s.1).sum();
        for (s, (c, ms)) in segs.iter().zip(&rows[1].segments) {
            assert_eq!(&s.category, c);
            assert!((s.width - ms * k).abs() < 1e-9, "proportional to ms");
        }
        let sum: f64 = segs.iter().map(|s| s.width).sum();
        assert!((sum - total * k).abs() < 1e-9);
        // Bad segments are dropped, not drawn.
        let bad = Breakdown {
            label: "bad".into(),
            segments: vec![
                ("a".into(), 1.0),
                ("b".into(), f64::NAN),
                ("c".into(), -2.0),
                ("d".into(), 3.0),
            ],
        };
        let segs = layout_bar(&bad, BarScale::Normalized, 0.0, 100.0, 0.0);
        assert_eq!(segs.len(), 2);
        assert!((segs[0].width - 25.0).abs() < 1e-9);
    }

    #[test]
    fn breakdown_svg() {
        let rows = sample_rows();
        for scale in [BarScale::Absolute, BarScale::Normalized] {
            let svg = time_breakdown(&rows, "Time <by> op & row", scale);
            check_xml(&svg).unwrap();
            assert!(svg.contains("Time &lt;by&gt; op &amp; row"));
            assert!(svg.contains("conv1d &lt;short&gt;"));
            // Same colour for a category in every row, one legend entry each.
            let linear: Vec<&str> = svg
                .split("<rect")
                .filter(|r| r.contains("<title>linear:"))
                .collect();
            assert_eq!(linear.len(), 2);
            assert!(linear
                .iter()
                .all(|r| r.contains(&format!("fill=\"{}\"", PALETTE[5]))));
            assert_eq!(svg.matches(">overhead</text>").count(), 1);
            // Rendered widths per row: sum to the full bar (normalized) or to total * scale.
            let mut widths = vec![0.0f64; rows.len()];
            let mut row = 0;
            let mut seen_y = None;
            for r in svg.split("<rect").filter(|r| r.contains("<title>")) {
                let attr = |key: &str| -> f64 {
                    let i = r.find(key).unwrap() + key.len();
                    r[i..].split('"').next().unwrap().parse().unwrap()
                };
                let y = attr(" y=\"");
                if seen_y.is_some_and(|s| s != y) {
                    row += 1;
                }
                seen_y = Some(y);
                widths[row] += attr(" width=\"");
            }
            let totals: Vec<f64> = rows
                .iter()
                .map(|r| r.segments.iter().map(|s| s.1).sum())
                .collect();
            for (wd, t) in widths.iter().zip(&totals) {
                match scale {
                    BarScale::Normalized => assert!((wd - 620.0).abs() < 0.01, "{wd}"),
                    BarScale::Absolute => {
                        let ratio = wd / t;
                        let ratio0 = widths[1] / totals[1];
                        assert!((ratio - ratio0).abs() / ratio0 < 1e-4, "{ratio} {ratio0}");
                    }
                }
            }
            assert!(svg.contains(">130 ms</text>") || svg.contains(">129 ms</text>"));
            assert!(svg.contains("linear: 62.0 ms (48.0 %)</title>"), "share");
        }
    }

    /// Writes example charts to the temp directory: `cargo test --lib npu::chart -- --ignored`.
    #[test]
    #[ignore]
    fn write_examples() {
        let dir = std::env::temp_dir();
        let write = |name: &str, svg: &str| {
            check_xml(svg).unwrap();
            std::fs::write(dir.join(name), svg).unwrap();
        };
        write(
            "chart-example-scatter.svg",
            &predicted_vs_published(&sample_points(), "NPU cost model: predicted vs published"),
        );
        let rows = sample_rows();
        write(
            "chart-example-breakdown.svg",
            &time_breakdown(&rows, "Time by op kind", BarScale::Absolute),
        );
        write(
            "chart-example-breakdown-normalized.svg",
            &time_breakdown(&rows, "Share of time by op kind", BarScale::Normalized),
        );
    }
}
