//! SIMD kernels of the integer runtime, chosen at run time.
//!
//! Layout (XNNPACK / tract-linalg style): each op's scalar reference stays with the op in
//! `quant/ops/` and is the specification; the SIMD variants live here, one module per op, each
//! instruction level in its own file, and [`level`] is the one dispatch point. Every variant must
//! equal the reference bit for bit: the integer arithmetic is exact (int32 lanes are widened to
//! int64 before any bound `check_reduction` proves can be exceeded), so the order of summation,
//! the blocking and the number of threads never change a result.
//!
//! `AUTONEURAL_KERNELS=scalar|avx2|avx512` caps the level (CI runs the tests at every level the
//! machine has). Arm NEON / dotprod would be one more [`Level`] and one more file per op.

pub mod gemm;

use std::sync::OnceLock;

/// Instruction levels, ordered: a machine that has a level has every level below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The reference loops in `quant/ops/` (portable).
    Scalar,
    /// x86-64 AVX2: `vpmaddwd` on 256-bit vectors.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI: `vpdpwssd` and `vpdpbusd` on 512-bit vectors.
    Avx512,
}

/// The environment variable that caps the kernel level.
pub const LEVEL_ENV: &str = "AUTONEURAL_KERNELS";

impl Level {
    pub const ALL: [Level; 3] = [Level::Scalar, Level::Avx2, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s)
    }

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Every level this CPU supports, lowest first.
pub fn available() -> Vec<Level> {
    Level::ALL.into_iter().filter(|l| l.supported()).collect()
}

/// The highest level this CPU supports.
pub fn best() -> Level {
    *available().last().expect("scalar is always supported")
}

/// Reads [`LEVEL_ENV`]: `Ok(None)` when unset, an error naming the choices when it is not a level
/// or the CPU lacks it.
pub fn level_from_env() -> Result<Option<Level>, String> {
    let Ok(v) = std::env::var(LEVEL_ENV) else {
        return Ok(None);
    };
    let names: Vec<&str> = available().iter().map(|l| l.name()).collect();
    match Level::parse(v.trim()) {
        Some(l) if l.supported() => Ok(Some(l)),
        Some(l) => Err(format!(
            "{LEVEL_ENV}={v}: this CPU does not support {} (available: {})",
            l.name(),
            names.join(", ")
        )),
        None => Err(format!(
            "{LEVEL_ENV}={v} is not a kernel level (available: {})",
            names.join(", ")
        )),
    }
}

/// The level every integer op runs at: [`best`], or what [`LEVEL_ENV`] asks for. An unusable
/// value falls back to [`best`] with a warning (the CLI checks it up front with
/// [`level_from_env`] and refuses it).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| match level_from_env() {
        Ok(Some(l)) => l,
        Ok(None) => best(),
        Err(e) => {
            tracing::warn!("{e}; using {}", best().name());
            best()
        }
    })
}
