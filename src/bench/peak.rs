//! Measured instruction peaks of this CPU: inline-assembly loops of 12 independent chains of one
//! instruction (assembly, because a compiler may legally rewrite intrinsics with constant inputs
//! into cheaper instructions and inflate the number).

use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Peak {
    /// Instruction and register width, e.g. `vpdpbusd zmm`.
    pub instruction: &'static str,
    /// Multiply-accumulates per instruction.
    pub macs_per_instruction: u32,
    pub threads: usize,
    /// Billions of multiply-accumulates per second, all threads together.
    pub gmacs: f64,
}

/// Iterations of the 12-instruction loop per measurement.
const ITERS: u64 = 20_000_000;

macro_rules! peak_loop {
    ($name:ident, $feat:literal, $ins:literal, $reg:literal, [$($c:tt),*]) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(iters: u64) {
            std::arch::asm!(
                "2:",
                concat!($ins, " ", $reg, "0, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "1, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "2, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "3, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "4, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "5, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "6, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "7, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "8, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "9, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "10, ", $reg, "12, ", $reg, "13"),
                concat!($ins, " ", $reg, "11, ", $reg, "12, ", $reg, "13"),
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                $(out($c) _,)*
                options(nostack),
            );
        }
    };
}

/// Instructions in the loop body.
const CHAINS: u64 = 12;

peak_loop!(
    dpbusd_zmm,
    "avx512f,avx512vnni",
    "vpdpbusd",
    "zmm",
    [
        "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10",
        "zmm11"
    ]
);
peak_loop!(
    dpwssd_zmm,
    "avx512f,avx512vnni",
    "vpdpwssd",
    "zmm",
    [
        "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10",
        "zmm11"
    ]
);
peak_loop!(
    fmadd_zmm,
    "avx512f",
    "vfmadd231ps",
    "zmm",
    [
        "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10",
        "zmm11"
    ]
);
peak_loop!(
    pmaddwd_ymm,
    "avx2",
    "vpmaddwd",
    "ymm",
    [
        "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", "ymm10",
        "ymm11"
    ]
);
peak_loop!(
    fmadd_ymm,
    "avx2,fma",
    "vfmadd231ps",
    "ymm",
    [
        "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", "ymm10",
        "ymm11"
    ]
);

/// The peaks this CPU has, measured on `pool` (every thread runs the loop at once).
pub fn measure(pool: &rayon::ThreadPool) -> Vec<Peak> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        type Loop = unsafe fn(u64);
        let mut cases: Vec<(&'static str, u32, Loop)> = Vec::new();
        if has!("avx512f") && has!("avx512vnni") {
            cases.push(("vpdpbusd zmm (u8 x s8)", 64, dpbusd_zmm));
            cases.push(("vpdpwssd zmm (s16 x s16)", 32, dpwssd_zmm));
        }
        if has!("avx2") {
            cases.push(("vpmaddwd ymm (s16 x s16)", 16, pmaddwd_ymm));
        }
        if has!("avx512f") {
            cases.push(("vfmadd231ps zmm (f32)", 16, fmadd_zmm));
        }
        if has!("avx2") && has!("fma") {
            cases.push(("vfmadd231ps ymm (f32)", 8, fmadd_ymm));
        }
        for (instruction, macs, f) in cases {
            // SAFETY: the CPU has the features the loop was compiled for (checked above).
            unsafe { f(ITERS / 10) }; // warm up the clocks
            let start = Instant::now();
            pool.broadcast(|_| unsafe { f(ITERS) });
            let s = start.elapsed().as_secs_f64();
            let n = pool.current_num_threads();
            out.push(Peak {
                instruction,
                macs_per_instruction: macs,
                threads: n,
                gmacs: (ITERS * CHAINS) as f64 * macs as f64 * n as f64 / s / 1e9,
            });
        }
    }
    let _ = pool;
    out
}
