//! Precision schemes: which bit widths each part of the model (vision encoder, connector,
//! language model) and each individual op is quantized to, and the granularity policy that goes
//! with a bit width.
//!
//! A scheme is written as a comma-separated string (`../shared/research/paper.md` §4: the paper's
//! default is W8A16 vision, W4A16 text):
//!
//! - `default` — vision `w8a16`, connector `w8a16`, text `w4a16`;
//! - a bare precision (`w8a8`) — that precision for every part not named explicitly;
//! - `vision=P`, `connector=P`, `text=P` — one part (parts not given keep the default);
//! - `group=N` — the group size of per-group (int4) weights, default 64.
//!
//! Precisions: `float`, `w8a16`, `w4a16`, `w8a8`, `w4a8`, `w16a16` (generally `w{4,8,16}a{8,16}`).
//!
//! Per-op overrides come from a JSON file
//! `{"overrides": [{"pattern": "layers.3.*", "precision": "w8a16"}, ...]}` (optional
//! `"part": "vision" | "connector" | "text"` restricts an override to one part). Patterns are
//! globs over op names (the names the float model reports to its [`crate::observe::Observer`]):
//! `*` matches any run of characters (dots included), `?` one character. The first matching
//! override wins; ops no override matches use their part's precision.
//!
//! Granularity policy: vision weights per output channel at every width; connector and text
//! weights per group of `group` inputs at 4 bits, per output channel at 8 and 16 bits.
//! Activations: A16 symmetric (zero point 0), A8 asymmetric.

use super::params::Granularity;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Default group size of per-group (4-bit) weights.
pub const DEFAULT_GROUP: usize = 64;

/// Weight widths a precision may name.
pub const WEIGHT_BITS: [u32; 3] = [4, 8, 16];
/// Activation widths a precision may name.
pub const ACT_BITS: [u32; 2] = [8, 16];

/// How one op (or part) is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Precision {
    /// Left in float32.
    Float,
    /// Integer: `wbits`-wide symmetric weights, `abits`-wide activations.
    Int { wbits: u32, abits: u32 },
}

impl Precision {
    pub const W8A16: Precision = Precision::Int {
        wbits: 8,
        abits: 16,
    };
    pub const W4A16: Precision = Precision::Int {
        wbits: 4,
        abits: 16,
    };

    pub fn is_float(self) -> bool {
        self == Precision::Float
    }

    /// Weight bits (`None` for float).
    pub fn weight_bits(self) -> Option<u32> {
        match self {
            Precision::Float => None,
            Precision::Int { wbits, .. } => Some(wbits),
        }
    }

    /// Activation bits (`None` for float).
    pub fn act_bits(self) -> Option<u32> {
        match self {
            Precision::Float => None,
            Precision::Int { abits, .. } => Some(abits),
        }
    }

    /// Whether activations are quantized symmetrically: A16 yes (zero point 0), A8 no.
    /// `None` for float.
    pub fn act_symmetric(self) -> Option<bool> {
        self.act_bits().map(|b| b >= 16)
    }

    /// Parses `float` or `w{4,8,16}a{8,16}` (case-insensitive, surrounding blanks ignored).
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        if t == "float" {
            return Ok(Precision::Float);
        }
        let bad = |why: &str| {
            Error::input(format!(
                "unknown precision `{}`: {why} (expected float, w8a16, w4a16, w8a8, w4a8 or w16a16)",
                s.trim()
            ))
        };
        let rest = t
            .strip_prefix('w')
            .ok_or_else(|| bad("must be `float` or start with `w`"))?;
        let (w, a) = rest
            .split_once('a')
            .ok_or_else(|| bad("missing the `a<bits>` part"))?;
        let wbits: u32 = w.parse().map_err(|_| bad("weight bits are not a number"))?;
        let abits: u32 = a
            .parse()
            .map_err(|_| bad("activation bits are not a number"))?;
        if !WEIGHT_BITS.contains(&wbits) {
            return Err(bad("weight bits must be 4, 8 or 16"));
        }
        if !ACT_BITS.contains(&abits) {
            return Err(bad("activation bits must be 8 or 16"));
        }
        Ok(Precision::Int { wbits, abits })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precision::Float => f.write_str("float"),
            Precision::Int { wbits, abits } => write!(f, "w{wbits}a{abits}"),
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::parse(s)
    }
}

impl From<Precision> for String {
    fn from(p: Precision) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for Precision {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Precision::parse(&s)
    }
}

/// The three parts of an AutoNeural model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Vision,
    Connector,
    Text,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Vision, Part::Connector, Part::Text];

    pub fn name(self) -> &'static str {
        match self {
            Part::Vision => "vision",
            Part::Connector => "connector",
            Part::Text => "text",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vision" => Ok(Part::Vision),
            "connector" => Ok(Part::Connector),
            "text" => Ok(Part::Text),
            _ => Err(Error::input(format!(
                "unknown model part `{}` (expected vision, connector or text)",
                s.trim()
            ))),
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One per-op override: ops whose name matches `pattern` (and, if given, belong to `part`) use
/// `precision`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub pattern: String,
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

impl Override {
    pub fn matches(&self, part: Part, op_name: &str) -> bool {
        self.part.is_none_or(|p| p == part) && glob_match(&self.pattern, op_name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverridesFile {
    overrides: Vec<Override>,
}

/// Precision of every part, per-op overrides, and the int4 group size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheme {
    pub vision: Precision,
    pub connector: Precision,
    pub text: Precision,
    /// Checked in order; the first match wins.
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// Inputs per scale group of per-group (4-bit) weights.
    #[serde(default = "default_group")]
    pub group: usize,
}

fn default_group() -> usize {
    DEFAULT_GROUP
}

impl Default for Scheme {
    /// The paper's scheme: W8A16 vision and connector, W4A16 text, groups of 64.
    fn default() -> Self {
        Self {
            vision: Precision::W8A16,
            connector: Precision::W8A16,
            text: Precision::W4A16,
            overrides: Vec::new(),
            group: DEFAULT_GROUP,
        }
    }
}

impl Scheme {
    /// Everything in float (no quantization).
    pub fn float() -> Self {
        Self::uniform(Precision::Float)
    }

    /// One precision for every part.
    pub fn uniform(p: Precision) -> Self {
        Self {
            vision: p,
            connector: p,
            text: p,
            ..Self::default()
        }
    }

    /// Parses a scheme string (see the module documentation), e.g. `vision=w8a16,text=w4a16`.
    pub fn parse(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return Err(Error::input(
                "empty precision scheme (try `default` or `vision=w8a16,text=w4a16`)",
            ));
        }
        let mut base: Option<Scheme> = None;
        let mut parts: [Option<Precision>; 3] = [None; 3];
        let mut group: Option<usize> = None;
        for raw in s.split(',') {
            let tok = raw.trim();
            if tok.is_empty() {
                return Err(Error::input(format!(
                    "empty entry in precision scheme `{}`",
                    s.trim()
                )));
            }
            match tok.split_once('=') {
                None => {
                    if base.is_some() {
                        return Err(Error::input(format!(
                            "precision scheme `{}`: more than one whole-model precision (`{tok}`)",
                            s.trim()
                        )));
                    }
                    base = Some(if tok.eq_ignore_ascii_case("default") {
                        Scheme::default()
                    } else {
                        Scheme::uniform(Precision::parse(tok).map_err(|e| {
                            Error::input(format!(
                                "precision scheme `{}`: {e}; a scheme entry is `default`, a precision or `part=precision`",
                                s.trim()
                            ))
                        })?)
                    });
                }
                Some((key, value)) => {
                    let key_l = key.trim().to_ascii_lowercase();
                    if key_l == "group" {
                        let g: usize = value.trim().parse().map_err(|_| {
                            Error::input(format!(
                                "precision scheme: group size `{}` is not a positive integer",
                                value.trim()
                            ))
                        })?;
                        if g == 0 {
                            return Err(Error::input(
                                "precision scheme: group size `0` must be at least 1",
                            ));
                        }
                        if group.replace(g).is_some() {
                            return Err(Error::input(format!(
                                "precision scheme `{}`: `group` given twice",
                                s.trim()
                            )));
                        }
                        continue;
                    }
                    let part = Part::parse(key).map_err(|_| {
                        Error::input(format!(
                            "precision scheme: unknown key `{}` in `{tok}` (expected vision, connector, text or group)",
                            key.trim()
                        ))
                    })?;
                    let p = Precision::parse(value)?;
                    if parts[part as usize].replace(p).is_some() {
                        return Err(Error::input(format!(
                            "precision scheme `{}`: `{part}` given twice",
                            s.trim()
                        )));
                    }
                }
            }
        }
        let mut scheme = base.unwrap_or_default();
        for part in Part::ALL {
            if let Some(p) = parts[part as usize] {
                *scheme.part_mut(part) = p;
            }
        }
        if let Some(g) = group {
            scheme.group = g;
        }
        Ok(scheme)
    }

    /// Reads per-op overrides from a JSON file and appends them (after any already present).
    pub fn with_overrides_file(mut self, path: &Path) -> Result<Self> {
        self.overrides.extend(load_overrides(path)?);
        Ok(self)
    }

    /// The precision of a whole part (before overrides).
    pub fn part(&self, part: Part) -> Precision {
        match part {
            Part::Vision => self.vision,
            Part::Connector => self.connector,
            Part::Text => self.text,
        }
    }

    pub fn part_mut(&mut self, part: Part) -> &mut Precision {
        match part {
            Part::Vision => &mut self.vision,
            Part::Connector => &mut self.connector,
            Part::Text => &mut self.text,
        }
    }

    /// The precision of op `op_name` of `part`: the first matching override, else the part's.
    pub fn precision_for(&self, part: Part, op_name: &str) -> Precision {
        self.overrides
            .iter()
            .find(|o| o.matches(part, op_name))
            .map_or(self.part(part), |o| o.precision)
    }

    /// How `part`'s weights of width `wbits` share scales: vision per output channel; connector
    /// and text per group of [`Scheme::group`] inputs at 4 bits, per output channel otherwise.
    pub fn weight_granularity(&self, part: Part, wbits: u32) -> Granularity {
        match part {
            Part::Vision => Granularity::PerChannel,
            Part::Connector | Part::Text if wbits <= 4 => Granularity::PerGroup(self.group),
            Part::Connector | Part::Text => Granularity::PerChannel,
        }
    }

    /// Precision, weight granularity and activation symmetry of one op.
    pub fn op_policy(&self, part: Part, op_name: &str) -> OpPolicy {
        let precision = self.precision_for(part, op_name);
        OpPolicy {
            precision,
            weight_granularity: precision
                .weight_bits()
                .map(|b| self.weight_granularity(part, b)),
            act_symmetric: precision.act_symmetric(),
        }
    }
}

/// Everything the converter needs to know about one op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpPolicy {
    pub precision: Precision,
    /// `None` for float ops.
    pub weight_granularity: Option<Granularity>,
    /// `None` for float ops.
    pub act_symmetric: Option<bool>,
}

impl fmt::Display for Scheme {
    /// The canonical scheme string (overrides are not part of it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vision={},connector={},text={},group={}",
            self.vision, self.connector, self.text, self.group
        )
    }
}

impl FromStr for Scheme {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Scheme::parse(s)
    }
}

/// Reads `{"overrides": [{"pattern": ..., "precision": ..., "part"?: ...}, ...]}`.
pub fn load_overrides(path: &Path) -> Result<Vec<Override>> {
    let text = crate::files::read_text(path, crate::files::limits::JSON)?;
    parse_overrides(&text).map_err(|msg| Error::corrupt(path, msg))
}

/// Parses the text of an overrides file; the error message names the bad entry.
pub fn parse_overrides(text: &str) -> std::result::Result<Vec<Override>, String> {
    let file: OverridesFile =
        serde_json::from_str(text).map_err(|e| format!("invalid overrides file: {e}"))?;
    for (i, o) in file.overrides.iter().enumerate() {
        if o.pattern.trim().is_empty() {
            return Err(format!("override {i}: empty pattern"));
        }
    }
    Ok(file.overrides)
}

/// Glob match over the whole of `name`: `*` any run of characters (possibly empty, dots
/// included), `?` exactly one character, anything else literally.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Position of the last `*` and the name position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_precision_name_parses_and_prints_back() {
        for (s, p) in [
            ("float", Precision::Float),
            (
                "w8a16",
                Precision::Int {
                    wbits: 8,
                    abits: 16,
                },
            ),
            (
                "w4a16",
                Precision::Int {
                    wbits: 4,
                    abits: 16,
                },
            ),
            ("w8a8", Precision::Int { wbits: 8, abits: 8 }),
            ("w4a8", Precision::Int { wbits: 4, abits: 8 }),
            (
                "w16a16",
                Precision::Int {
                    wbits: 16,
                    abits: 16,
                },
            ),
        ] {
            assert_eq!(Precision::parse(s).unwrap(), p);
            assert_eq!(Precision::parse(&s.to_uppercase()).unwrap(), p);
            assert_eq!(p.to_string(), s);
            // Serde round trip through the string form.
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(j, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Precision>(&j).unwrap(), p);
        }
        assert_eq!(Precision::W8A16.act_symmetric(), Some(true));
        assert_eq!(
            Precision::parse("w8a8").unwrap().act_symmetric(),
            Some(false)
        );
        assert_eq!(Precision::Float.act_symmetric(), None);
        assert_eq!(Precision::W4A16.weight_bits(), Some(4));
    }

    #[test]
    fn bad_precisions_name_the_token() {
        for bad in [
            "w3a16", "w8a4", "w8", "int8", "a16w8", "wxa16", "w8ax", "", "floaty",
        ] {
            let e = Precision::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        assert!(serde_json::from_str::<Precision>("\"w5a16\"").is_err());
    }

    #[test]
    fn scheme_strings() {
        let d = Scheme::default();
        assert_eq!(d.vision, Precision::W8A16);
        assert_eq!(d.connector, Precision::W8A16);
        assert_eq!(d.text, Precision::W4A16);
        assert_eq!(d.group, 64);
        assert_eq!(Scheme::parse("default").unwrap(), d);
        assert_eq!(Scheme::parse(" DEFAULT ").unwrap(), d);
        assert_eq!(Scheme::parse("vision=w8a16,text=w4a16").unwrap(), d);
        // Unspecified parts keep the default.
        let s = Scheme::parse("text=w8a16").unwrap();
        assert_eq!(
            (s.vision, s.connector, s.text),
            (Precision::W8A16, Precision::W8A16, Precision::W8A16)
        );
        let s = Scheme::parse("vision=float").unwrap();
        assert_eq!(
            (s.vision, s.connector, s.text),
            (Precision::Float, Precision::W8A16, Precision::W4A16)
        );
        // A bare precision applies to every part, explicit parts win whatever the order.
        let w8a8 = Precision::parse("w8a8").unwrap();
        assert_eq!(Scheme::parse("w8a8").unwrap(), Scheme::uniform(w8a8));
        for s in ["w8a8,text=w4a16", "text=w4a16, w8a8"] {
            let s = Scheme::parse(s).unwrap();
            assert_eq!(
                (s.vision, s.connector, s.text),
                (w8a8, w8a8, Precision::W4A16)
            );
        }
        assert_eq!(Scheme::parse("float").unwrap(), Scheme::float());
        let s = Scheme::parse("default,connector=w16a16,group=128").unwrap();
        assert_eq!(s.connector, Precision::parse("w16a16").unwrap());
        assert_eq!(s.group, 128);
        // Display is canonical and parses back.
        let s = Scheme::parse("w4a8,vision=w8a16,group=32").unwrap();
        assert_eq!(
            s.to_string(),
            "vision=w8a16,connector=w4a8,text=w4a8,group=32"
        );
        assert_eq!(Scheme::parse(&s.to_string()).unwrap(), s);
        // Serde round trip.
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Scheme>(&j).unwrap(), s);
    }

    #[test]
    fn bad_scheme_strings_name_the_token() {
        for (s, token) in [
            ("vision=w9a16", "w9a16"),
            ("audio=w8a16", "audio"),
            ("w8a8,w4a16", "w4a16"),
            ("text=w4a16,text=w8a16", "text"),
            ("group=abc", "abc"),
            ("group=0", "0"),
            ("default,,text=w4a16", "default,,text=w4a16"),
            ("nonsense", "nonsense"),
            ("text=", "``"),
        ] {
            let e = Scheme::parse(s).unwrap_err().to_string();
            let want = if token == "``" {
                "``".to_string()
            } else {
                format!("`{token}`")
            };
            assert!(e.contains(&want), "{s}: {e}");
        }
        assert!(Scheme::parse("").is_err());
        assert!(Scheme::parse("  ").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("layers.3.*", "layers.3.conv.in_proj"));
        assert!(!glob_match("layers.3.*", "layers.30.conv.in_proj"));
        assert!(glob_match("layers.3.*", "layers.3."));
        assert!(!glob_match("layers.3.*", "layers.3"));
        assert!(!glob_match("layers.3.*", "xlayers.3.conv"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything.at.all"));
        assert!(glob_match("blocks.*.attn.*", "blocks.2.9.attn.query.proj"));
        assert!(!glob_match("blocks.*.attn.*", "blocks.2.9.dw_mid"));
        assert!(glob_match("*.proj", "blocks.2.9.attn.query.proj"));
        assert!(!glob_match("*.proj", "blocks.2.9.attn.query.proj.x"));
        assert!(glob_match("layers.?.conv", "layers.4.conv"));
        assert!(!glob_match("layers.?.conv", "layers.14.conv"));
        assert!(glob_match("a*b*c", "aXXbYYbZZc"));
        assert!(!glob_match("a*b*c", "aXXbYYbZZ"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
    }

    #[test]
    fn overrides_first_match_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overrides.json");
        std::fs::write(
            &path,
            r#"{"overrides": [
                {"pattern": "layers.3.*", "precision": "w8a16"},
                {"pattern": "layers.*", "precision": "float"},
                {"pattern": "blocks.2.*", "precision": "float", "part": "vision"},
                {"pattern": "*.linear_2", "precision": "w16a16"}
            ]}"#,
        )
        .unwrap();
        let s = Scheme::default().with_overrides_file(&path).unwrap();
        assert_eq!(s.overrides.len(), 4);
        assert_eq!(
            s.precision_for(Part::Text, "layers.3.conv.in_proj"),
            Precision::W8A16
        );
        assert_eq!(
            s.precision_for(Part::Text, "layers.4.conv.in_proj"),
            Precision::Float
        );
        assert_eq!(
            s.precision_for(Part::Text, "embed_tokens"),
            Precision::W4A16
        );
        assert_eq!(
            s.precision_for(Part::Vision, "blocks.2.9.attn.query.proj"),
            Precision::Float
        );
        // The part restriction applies.
        assert_eq!(s.precision_for(Part::Text, "blocks.2.0"), Precision::W4A16);
        assert_eq!(
            s.precision_for(Part::Vision, "blocks.1.0.conv_exp"),
            Precision::W8A16
        );
        assert_eq!(
            s.precision_for(Part::Connector, "multi_modal_projector.linear_2"),
            Precision::parse("w16a16").unwrap()
        );
        assert_eq!(
            s.precision_for(Part::Connector, "multi_modal_projector.linear_1"),
            Precision::W8A16
        );
        // Policies.
        let p = s.op_policy(Part::Text, "embed_tokens");
        assert_eq!(p.weight_granularity, Some(Granularity::PerGroup(64)));
        assert_eq!(p.act_symmetric, Some(true));
        let p = s.op_policy(Part::Text, "layers.3.conv.in_proj");
        assert_eq!(p.weight_granularity, Some(Granularity::PerChannel));
        let p = s.op_policy(Part::Text, "layers.5.feed_forward.w1");
        assert_eq!(p.precision, Precision::Float);
        assert_eq!((p.weight_granularity, p.act_symmetric), (None, None));
        let s = Scheme::parse("w4a8,group=32").unwrap();
        assert_eq!(
            s.weight_granularity(Part::Vision, 4),
            Granularity::PerChannel
        );
        assert_eq!(
            s.weight_granularity(Part::Connector, 4),
            Granularity::PerGroup(32)
        );
        // 16-bit weights are per output channel in every part (no group expansion needed).
        for part in [Part::Vision, Part::Connector, Part::Text] {
            assert_eq!(s.weight_granularity(part, 16), Granularity::PerChannel);
        }
        let p = Scheme::parse("w16a16")
            .unwrap()
            .op_policy(Part::Text, "layers.0.conv.in_proj");
        assert_eq!(
            (p.weight_granularity, p.act_symmetric),
            (Some(Granularity::PerChannel), Some(true))
        );
        assert_eq!(
            s.op_policy(Part::Vision, "conv_stem").act_symmetric,
            Some(false)
        );
    }

    #[test]
    fn bad_override_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let e = Scheme::default()
            .with_overrides_file(&missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json"), "{e}");
        for (text, token) in [
            ("{not json", "overrides.json"),
            (
                r#"{"overrides": [{"pattern": "a.*", "precision": "w7a16"}]}"#,
                "w7a16",
            ),
            (
                r#"{"overrides": [{"pattern": "a.*", "precison": "w8a16"}]}"#,
                "precison",
            ),
            (
                r#"{"overrides": [{"pattern": "a.*", "precision": "w8a16", "part": "audio"}]}"#,
                "audio",
            ),
            (
                r#"{"overrides": [{"pattern": " ", "precision": "w8a16"}]}"#,
                "empty pattern",
            ),
            (r#"{"override": []}"#, "override"),
        ] {
            let p = dir.path().join("overrides.json");
            std::fs::write(&p, text).unwrap();
            let e = Scheme::default()
                .with_overrides_file(&p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(token), "{text}: {e}");
            assert!(e.contains("overrides.json"), "{text}: {e}");
        }
    }
}
