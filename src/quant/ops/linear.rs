//! Integer fully connected layer `y[T, out] = x[T, in] W[out, in]^T (+ b)`, and the integer weight
//! matrix ([`QMatrix`]: int16, int8 or packed int4, per-channel or per-group) shared by the other
//! weighted integer ops (convolutions, embeddings, causal conv).
//!
//! Per output row `o`, with `x` in `(s_x, zp_x)` and the weight row quantized as
//! `w = row_scale[o] * group_mult[o, g] / 2^GROUP_SCALE_BITS * q`:
//!
//! ```text
//! acc_o = sum_g group_mult[o, g] * sum_{i in g} (x_i - zp_x) * q_oi  (+ bias_o)       (i64)
//! y_o   = requantize(acc_o, mult[o], zp_y, bits_y)
//! mult[o] = s_x * row_scale[o] / 2^GROUP_SCALE_BITS / s_y
//! ```
//!
//! The bias is stored in accumulator units (`s_x * row_scale[o] / 2^GROUP_SCALE_BITS`) as `i64`.
//! Every accumulator is provably inside `i64` ([`check_reduction`] at construction).

use crate::error::{Error, Result};
use crate::quant::arith::{
    check_multipliers, check_reduction, pack_int4, qmax, qmin, requantize, size_product,
    unpack_int4, Multiplier,
};
use crate::quant::kernels;
use crate::quant::kernels::gemm::{self, RowSums, RowSumsCache};
use crate::quant::params::{ActQuant, QuantWeight};
use crate::quant::tensor::QTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Integer weight storage: one `i16` per value (9 to 16 bits), one `i8` per value (5 to 8 bits),
/// or two 4-bit values per byte (up to 4 bits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackedWeights {
    /// Row-major values.
    I8(Vec<i8>),
    /// Each row packed separately with [`pack_int4`] (`row_bytes = inp.div_ceil(2)` per row).
    I4(Vec<u8>),
    /// Row-major values wider than 8 bits.
    I16(Vec<i16>),
}

/// A symmetric integer weight matrix `[out, inp]` with integer per-group multipliers: the integer
/// half of a [`QuantWeight`] (its real scales are folded into the op's multipliers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QMatrix {
    pub out: usize,
    pub inp: usize,
    /// Weight bit width (values in `[-qmax(bits), qmax(bits)]`); `<= 4` is stored packed, `> 8`
    /// as `i16`.
    pub bits: u32,
    /// Inputs per group (`inp` for per-channel).
    pub group: usize,
    #[serde(with = "crate::artifact::array")]
    pub data: PackedWeights,
    /// `[out, inp.div_ceil(group)]`, each in `[0, 2^GROUP_SCALE_BITS]`.
    #[serde(with = "crate::artifact::array")]
    pub group_mult: Vec<u16>,
    /// Per-row sums the SIMD kernels need, computed at the first product.
    #[serde(skip)]
    pub sums: RowSumsCache,
}

impl QMatrix {
    /// Takes the integer values and group multipliers of a quantized weight (packing int4).
    pub fn from_quant_weight(qw: &QuantWeight) -> Result<Self> {
        Self::new(
            qw.out,
            qw.inp,
            qw.bits,
            qw.group,
            &qw.q,
            qw.group_mult.clone(),
        )
    }

    /// Validates the values (`|q| <= qmax(bits)`) and shapes, packing to 4 bits when `bits <= 4`,
    /// storing `i8` up to 8 bits and `i16` above.
    pub fn new(
        out: usize,
        inp: usize,
        bits: u32,
        group: usize,
        q: &[i16],
        group_mult: Vec<u16>,
    ) -> Result<Self> {
        if !(2..=16).contains(&bits) {
            return Err(Error::input(format!(
                "weight bit width {bits} not supported (2..=16)"
            )));
        }
        if q.len() != size_product("weight matrix", &[out, inp])? {
            return Err(Error::input(format!(
                "weight matrix [{out}, {inp}] has {} values",
                q.len()
            )));
        }
        let qm = qmax(bits);
        if let Some(v) = q.iter().find(|&&v| (v as i64).abs() > qm) {
            return Err(Error::input(format!(
                "weight value {v} outside the symmetric {bits}-bit range [-{qm}, {qm}]"
            )));
        }
        // Every value is within qmax(bits), so the narrowing casts below are exact.
        let data = if bits <= 4 {
            let mut packed = Vec::with_capacity(out * inp.div_ceil(2));
            for row in q.chunks(inp.max(1)) {
                let row8: Vec<i8> = row.iter().map(|&v| v as i8).collect();
                packed.extend(pack_int4(&row8));
            }
            PackedWeights::I4(packed)
        } else if bits <= 8 {
            PackedWeights::I8(q.iter().map(|&v| v as i8).collect())
        } else {
            PackedWeights::I16(q.to_vec())
        };
        let m = Self {
            out,
            inp,
            bits,
            group,
            data,
            group_mult,
            sums: RowSumsCache::default(),
        };
        m.validate()?;
        Ok(m)
    }

    /// Checks everything the kernels rely on: the bit width, `0 < group <= inp`, the storage
    /// kind and length for the bit width (packed int4 rows of `inp.div_ceil(2)` bytes with a zero
    /// padding nibble, `i8`, or `i16`), every value within `[-qmax(bits), qmax(bits)]`, and one
    /// group multiplier in `[0, 2^GROUP_SCALE_BITS]` per group.
    pub fn validate(&self) -> Result<()> {
        let (out, inp, bits, group) = (self.out, self.inp, self.bits, self.group);
        if !(2..=16).contains(&bits) {
            return Err(Error::input(format!(
                "weight bit width {bits} not supported (2..=16)"
            )));
        }
        if inp == 0 || group == 0 || group > inp {
            return Err(Error::input(format!(
                "weight matrix [{out}, {inp}] with group {group}: need 0 < group <= inp"
            )));
        }
        let n = size_product("weight matrix", &[out, inp])?;
        let qm = qmax(bits);
        let bad = |v: i64| {
            Error::input(format!(
                "weight value {v} outside the symmetric {bits}-bit range [-{qm}, {qm}]"
            ))
        };
        let (kind, len, want) = match &self.data {
            PackedWeights::I4(p) => ("packed int4", p.len(), out * inp.div_ceil(2)),
            PackedWeights::I8(v) => ("int8", v.len(), n),
            PackedWeights::I16(v) => ("int16", v.len(), n),
        };
        let want_kind = if bits <= 4 {
            "packed int4"
        } else if bits <= 8 {
            "int8"
        } else {
            "int16"
        };
        if kind != want_kind {
            return Err(Error::input(format!(
                "{bits}-bit weights are stored as {want_kind}, not {kind}"
            )));
        }
        if len != want {
            return Err(Error::input(format!(
                "weight matrix [{out}, {inp}] stored as {kind} needs {want} entries, got {len}"
            )));
        }
        match &self.data {
            PackedWeights::I4(p) => {
                let rb = inp.div_ceil(2);
                for (o, row) in p.chunks_exact(rb).enumerate() {
                    if inp % 2 == 1 && row[rb - 1] >> 4 != 0 {
                        return Err(Error::input(format!(
                            "packed int4 row {o}: the padding nibble of an odd-length row is not 0"
                        )));
                    }
                    if let Some(v) = (0..inp)
                        .map(|i| unpack_int4(row, i) as i64)
                        .find(|v| v.abs() > qm)
                    {
                        return Err(bad(v));
                    }
                }
            }
            PackedWeights::I8(v) => {
                if let Some(&v) = v.iter().find(|&&v| (v as i64).abs() > qm) {
                    return Err(bad(v as i64));
                }
            }
            PackedWeights::I16(v) => {
                if let Some(&v) = v.iter().find(|&&v| (v as i64).abs() > qm) {
                    return Err(bad(v as i64));
                }
            }
        }
        let gpr = inp.div_ceil(group);
        if self.group_mult.len() != size_product("group multipliers", &[out, gpr])? {
            return Err(Error::input(format!(
                "weight matrix [{out}, {inp}] with group {group} needs {} group multipliers, got {}",
                out * gpr,
                self.group_mult.len()
            )));
        }
        let unit = 1u16 << crate::quant::params::GROUP_SCALE_BITS;
        if let Some(g) = self.group_mult.iter().find(|&&g| g > unit) {
            return Err(Error::input(format!(
                "group multiplier {g} exceeds 2^GROUP_SCALE_BITS = {unit}"
            )));
        }
        Ok(())
    }

    pub fn groups_per_row(&self) -> usize {
        self.inp.div_ceil(self.group)
    }

    /// Unpacks row `o` into `buf` (`len == inp`).
    pub fn row_into(&self, o: usize, buf: &mut [i16]) {
        let n = self.inp;
        assert_eq!(buf.len(), n);
        match &self.data {
            PackedWeights::I8(v) => {
                for (b, &x) in buf.iter_mut().zip(&v[o * n..(o + 1) * n]) {
                    *b = x as i16;
                }
            }
            PackedWeights::I4(p) => {
                let rb = n.div_ceil(2);
                let row = &p[o * rb..(o + 1) * rb];
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = unpack_int4(row, i) as i16;
                }
            }
            PackedWeights::I16(v) => buf.copy_from_slice(&v[o * n..(o + 1) * n]),
        }
    }

    /// The integer multipliers of row `o`'s groups.
    pub fn row_group_mult(&self, o: usize) -> &[u16] {
        let gpr = self.groups_per_row();
        &self.group_mult[o * gpr..(o + 1) * gpr]
    }

    /// All values, unpacked, row-major.
    pub fn values(&self) -> Vec<i16> {
        let mut v = vec![0i16; self.out * self.inp];
        if self.inp > 0 {
            for (o, row) in v.chunks_mut(self.inp).enumerate() {
                self.row_into(o, row);
            }
        }
        v
    }

    /// The per-row weight sums of the SIMD kernels (computed once).
    pub fn row_sums(&self) -> std::sync::Arc<RowSums> {
        self.sums.get_or_compute(self)
    }

    /// Bound on `|group_mult * q|`: what one input is multiplied by in the accumulator.
    pub fn effective_abs_max(&self) -> i64 {
        let gm = self.group_mult.iter().copied().max().unwrap_or(0) as i64;
        qmax(self.bits) * gm
    }
}

/// `sum_g gm[g] * sum_{i in g} x_i * w_i` over consecutive groups of `group` inputs, in `i64`.
#[inline]
pub fn dot_grouped(x: &[i32], w: &[i16], gm: &[u16], group: usize) -> i64 {
    debug_assert_eq!(x.len(), w.len());
    let mut acc = 0i64;
    for ((xs, ws), &g) in x.chunks(group).zip(w.chunks(group)).zip(gm) {
        let inner: i64 = xs.iter().zip(ws).map(|(&a, &b)| a as i64 * b as i64).sum();
        acc += g as i64 * inner;
    }
    acc
}

/// Checks that activation parameters are usable by the integer runtime: `bits` in `2..=16` (values
/// are stored in `i16`) and the zero point inside the integer range.
pub fn check_act(op: &str, what: &str, q: &ActQuant) -> Result<()> {
    if !(q.scale.is_finite() && q.scale > 0.0) {
        return Err(Error::input(format!(
            "{op}: {what} scale {} must be finite and positive",
            q.scale
        )));
    }
    if !(2..=16).contains(&q.bits) {
        return Err(Error::input(format!(
            "{op}: {what} bit width {} not supported (2..=16)",
            q.bits
        )));
    }
    let zp = q.zero_point as i64;
    if zp < qmin(q.bits) || zp > qmax(q.bits) {
        return Err(Error::input(format!(
            "{op}: {what} zero point {zp} outside the {}-bit range",
            q.bits
        )));
    }
    Ok(())
}

/// The checks shared by the weighted ops (linear, convolutions): one multiplier and (optional)
/// bias entry per weight row (`rows` names them), every multiplier valid, and the reduction of
/// `weight.inp` products of `x` by the weights plus the bias provably inside `i64`.
pub fn check_weighted(
    op: &str,
    rows: &str,
    weight: &QMatrix,
    bias: Option<&[i64]>,
    mult: &[Multiplier],
    x: &ActQuant,
) -> Result<()> {
    if mult.len() != weight.out {
        return Err(Error::input(format!(
            "{op}: {} multipliers for {} {rows}",
            mult.len(),
            weight.out
        )));
    }
    check_multipliers(op, "multiplier", mult)?;
    let bias_max = match bias {
        Some(b) if b.len() != weight.out => {
            return Err(Error::input(format!(
                "{op}: bias of {} for {} {rows}",
                b.len(),
                weight.out
            )))
        }
        Some(b) => b.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0),
        None => 0,
    };
    let bias_max = i64::try_from(bias_max)
        .map_err(|_| Error::input(format!("{op}: bias magnitude overflows i64")))?;
    check_reduction(
        op,
        weight.inp,
        centered_abs_max(x),
        weight.effective_abs_max(),
        bias_max,
    )
}

/// The largest `|v - zero_point|` an activation can have.
pub fn centered_abs_max(q: &ActQuant) -> i64 {
    let zp = q.zero_point as i64;
    (qmin(q.bits) - zp).abs().max((qmax(q.bits) - zp).abs())
}

/// Integer linear layer; see the module docs for the arithmetic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QLinear {
    /// `[out, in]`.
    pub weight: QMatrix,
    /// Per output row, in accumulator units `s_x * row_scale[o] / 2^GROUP_SCALE_BITS`.
    #[serde(with = "crate::artifact::array")]
    pub bias: Option<Vec<i64>>,
    /// Per output row: `s_x * row_scale[o] / 2^GROUP_SCALE_BITS / s_y`.
    #[serde(with = "crate::artifact::array")]
    pub mult: Vec<Multiplier>,
    /// Expected input quantization.
    pub x: ActQuant,
    /// Output quantization.
    pub y: ActQuant,
}

impl QLinear {
    /// Validates shapes and proves (via [`check_reduction`]) that no accumulator can overflow.
    pub fn new(
        weight: QMatrix,
        bias: Option<Vec<i64>>,
        mult: Vec<Multiplier>,
        x: ActQuant,
        y: ActQuant,
    ) -> Result<Self> {
        let l = Self {
            weight,
            bias,
            mult,
            x,
            y,
        };
        l.validate()?;
        Ok(l)
    }

    /// Checks everything [`Self::forward`] relies on: a valid weight matrix, activations, one
    /// valid multiplier (and bias) per output row, and no accumulator able to overflow.
    pub fn validate(&self) -> Result<()> {
        self.weight
            .validate()
            .map_err(|e| Error::input(format!("QLinear: {e}")))?;
        check_act("QLinear", "input", &self.x)?;
        check_act("QLinear", "output", &self.y)?;
        check_weighted(
            "QLinear",
            "output rows",
            &self.weight,
            self.bias.as_deref(),
            &self.mult,
            &self.x,
        )
    }

    pub fn in_features(&self) -> usize {
        self.weight.inp
    }

    pub fn out_features(&self) -> usize {
        self.weight.out
    }

    /// `x`: `[..., in]` in [`Self::x`]'s quantization; returns `[..., out]` in [`Self::y`]'s.
    pub fn forward(&self, x: &QTensor) -> QTensor {
        let (inp, out) = (self.in_features(), self.out_features());
        assert_eq!(
            x.shape.last().copied(),
            Some(inp),
            "QLinear: input shape {:?}, expected [..., {inp}]",
            x.shape
        );
        assert_eq!(x.q, self.x, "QLinear: input quantization differs");
        let t = x.numel() / inp;
        let data = self.forward_rows(&x.data, t);
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("checked above") = out;
        QTensor::new(&shape, data, self.y)
    }

    /// The raw integer rows: `x` is `[t, in]` row-major, returns `[t, out]`.
    pub fn forward_rows(&self, x: &[i16], t: usize) -> Vec<i16> {
        linear_rows(
            &self.weight,
            self.bias.as_deref(),
            &self.mult,
            (self.x, self.y),
            x,
            t,
        )
    }
}

/// THE integer linear product, at the run-time kernel level ([`crate::quant::kernels::level`]):
/// bit for bit [`linear_rows_ref`]. Shared by [`QLinear`], the tied output projection and the
/// convolutions.
pub fn linear_rows(
    weight: &QMatrix,
    bias: Option<&[i64]>,
    mult: &[Multiplier],
    q: (ActQuant, ActQuant),
    x: &[i16],
    t: usize,
) -> Vec<i16> {
    gemm::linear(kernels::level(), weight, bias, mult, q, x, t)
}

/// The reference integer linear kernel (the specification of every SIMD variant): `x [t, weight.inp]` (raw integers in `q.0`) times `weight^T`, plus
/// the bias in accumulator units, requantized per output row into `q.1`. Shared by [`QLinear`]
/// and the tied output projection that reads an embedding table as its weight.
pub fn linear_rows_ref(
    weight: &QMatrix,
    bias: Option<&[i64]>,
    mult: &[Multiplier],
    q: (ActQuant, ActQuant),
    x: &[i16],
    t: usize,
) -> Vec<i16> {
    let (inp, out) = (weight.inp, weight.out);
    assert_eq!(x.len(), t * inp);
    let zp = q.0.zero_point;
    let xc: Vec<i32> = x.iter().map(|&v| v as i32 - zp).collect();
    let (zy, by, group) = (q.1.zero_point, q.1.bits, weight.group);
    // One task per output row: unpack it once, then run it over every token.
    let cols: Vec<Vec<i16>> = (0..out)
        .into_par_iter()
        .map_init(
            || vec![0i16; inp],
            |buf, o| {
                weight.row_into(o, buf);
                let gm = weight.row_group_mult(o);
                let b = bias.map_or(0, |b| b[o]);
                xc.chunks_exact(inp)
                    .map(|xr| {
                        let acc = dot_grouped(xr, buf, gm, group) + b;
                        requantize(acc, mult[o], zy, by) as i16
                    })
                    .collect()
            },
        )
        .collect();
    let mut y = vec![0i16; t * out];
    for (o, col) in cols.iter().enumerate() {
        for (ti, &v) in col.iter().enumerate() {
            y[ti * out + o] = v;
        }
    }
    y
}

/// Helpers shared by the integer ops' tests: a seeded LCG, float references in `f64`, and the
/// "within one output step" check.
#[cfg(test)]
#[allow(clippy::float_arithmetic)]
pub(crate) mod testutil {
    use crate::quant::arith::{qmax, qmin};
    use crate::quant::params::{ActQuant, QuantWeight, GROUP_SCALE_BITS};

    /// 64-bit LCG (Knuth's MMIX constants); the high bits are used.
    pub struct Lcg(u64);

    impl Lcg {
        pub fn new(seed: u64) -> Self {
            let mut r = Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
            r.next_u32();
            r
        }
        pub fn next_u32(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 32) as u32
        }
        /// Uniform in `[0, 1)`.
        pub fn unit(&mut self) -> f64 {
            self.next_u32() as f64 / 4_294_967_296.0
        }
        pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * self.unit() as f32
        }
        /// Uniform integer in `[lo, hi]`.
        pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
            // u128: the span of a 32-bit range times a u32 does not fit in 64 bits.
            lo + ((self.next_u32() as u128 * (hi - lo + 1) as u128) >> 32) as i64
        }
        /// Standard normal (Box-Muller).
        pub fn gauss(&mut self) -> f32 {
            let u1 = self.unit().max(1e-12);
            let u2 = self.unit();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        }
        pub fn floats(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
            (0..n).map(|_| self.uniform(lo, hi)).collect()
        }
        /// `n` integers uniform over the whole range of `q`.
        pub fn ints(&mut self, n: usize, q: &ActQuant) -> Vec<i16> {
            (0..n)
                .map(|_| self.int(qmin(q.bits), qmax(q.bits)) as i16)
                .collect()
        }
    }

    /// The real values of integer activations, in `f64`.
    pub fn deq(v: &[i16], q: &ActQuant) -> Vec<f64> {
        v.iter()
            .map(|&x| q.scale as f64 * (x as i32 - q.zero_point) as f64)
            .collect()
    }

    /// The real weights a [`QuantWeight`] stands for, in `f64`.
    pub fn deq_weight(qw: &QuantWeight) -> Vec<f64> {
        let gpr = qw.groups_per_row();
        let unit = (1u32 << GROUP_SCALE_BITS) as f64;
        (0..qw.out * qw.inp)
            .map(|i| {
                let (o, c) = (i / qw.inp, i % qw.inp);
                qw.row_scale[o] as f64 * qw.group_mult[o * gpr + c / qw.group] as f64 / unit
                    * qw.q[i] as f64
            })
            .collect()
    }

    /// Asserts every integer output is within one output step of the real reference (the only
    /// error allowed is the final rounding, 1/2 step, plus the tiny error of fixed-point
    /// multipliers and integer biases), and exactly `qmin`/`qmax` where the reference is at least
    /// one step beyond the range. Returns the largest error, in output steps.
    pub fn assert_within_one_step(what: &str, got: &[i16], reference: &[f64], y: &ActQuant) -> f64 {
        assert_eq!(got.len(), reference.len(), "{what}: lengths");
        let (lo, hi) = (qmin(y.bits) as f64, qmax(y.bits) as f64);
        let mut worst = 0.0f64;
        for (i, (&g, &r)) in got.iter().zip(reference).enumerate() {
            let exact = r / y.scale as f64 + y.zero_point as f64;
            let clamped = exact.clamp(lo, hi);
            let err = (g as f64 - clamped).abs();
            worst = worst.max(err);
            assert!(
                err <= 1.0,
                "{what}[{i}]: got {g}, reference {exact} (clamped {clamped})"
            );
            if exact >= hi + 1.0 {
                assert_eq!(g as f64, hi, "{what}[{i}] must saturate to qmax");
            }
            if exact <= lo - 1.0 {
                assert_eq!(g as f64, lo, "{what}[{i}] must saturate to qmin");
            }
        }
        worst
    }

    /// Output quantization covering `reference` (asymmetric for 8 bits, symmetric for 16) shrunk
    /// by `shrink` so that the extremes saturate.
    pub fn out_quant(reference: &[f64], bits: u32, shrink: f32) -> ActQuant {
        let lo = reference.iter().cloned().fold(0.0, f64::min) as f32 * shrink;
        let hi = reference.iter().cloned().fold(0.0, f64::max) as f32 * shrink;
        ActQuant::from_range(lo, hi, bits, bits == 16)
    }

    /// Round half away from zero of `acc * m * 2^(shift - 31)`, in `i128` (reference for
    /// [`crate::quant::arith::Multiplier::apply`] on huge accumulators).
    pub fn apply_i128(acc: i128, m: crate::quant::arith::Multiplier) -> i128 {
        let prod = acc * m.m as i128;
        let right = 31 - m.shift;
        assert!(right > 0);
        let half = 1i128 << (right - 1);
        if prod >= 0 {
            (prod + half) >> right
        } else {
            -((-prod + half) >> right)
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::quant::params::{quantize_weight, Granularity, WeightRange};
    use crate::quant::prepare::linear::{linear, linear_from_quantized};

    /// The real-valued `x W^T + b` from dequantized inputs and weights, in `f64`.
    fn reference(
        x: &[f64],
        t: usize,
        w: &[f64],
        out: usize,
        inp: usize,
        b: Option<&[f32]>,
    ) -> Vec<f64> {
        let mut y = vec![0.0; t * out];
        for ti in 0..t {
            for o in 0..out {
                let dot: f64 = (0..inp).map(|i| x[ti * inp + i] * w[o * inp + i]).sum();
                y[ti * out + o] = dot + b.map_or(0.0, |b| b[o] as f64);
            }
        }
        y
    }

    #[test]
    fn linear_within_one_step_of_float_reference() {
        let (t, inp, out) = (5, 70, 9);
        let mut rng = Lcg::new(1);
        let mut worst = 0.0f64;
        for xbits in [8u32, 16] {
            for (wbits, gran) in [
                (8, Granularity::PerChannel),
                (4, Granularity::PerChannel),
                (8, Granularity::PerGroup(16)),
                (4, Granularity::PerGroup(16)),
                (8, Granularity::PerTensor),
                (16, Granularity::PerChannel),
                (16, Granularity::PerGroup(16)),
            ] {
                for with_bias in [false, true] {
                    let w: Vec<f32> = (0..out * inp)
                        .map(|i| rng.uniform(-1.0, 1.0) * (1.0 + (i % 13) as f32 / 4.0))
                        .collect();
                    let b: Vec<f32> = rng.floats(out, -3.0, 3.0);
                    let bias = with_bias.then_some(&b[..]);
                    // A8: asymmetric with a nonzero zero point; A16: symmetric.
                    let xq = if xbits == 8 {
                        ActQuant::from_range(-0.7, 2.3, 8, false)
                    } else {
                        ActQuant::from_range(-2.0, 2.0, 16, true)
                    };
                    assert!(xbits == 16 || xq.zero_point != 0);
                    let xi = rng.ints(t * inp, &xq);
                    let qw = quantize_weight(&w, out, inp, wbits, gran, WeightRange::MinMax);
                    let r = reference(&deq(&xi, &xq), t, &deq_weight(&qw), out, inp, bias);
                    for ybits in [8u32, 16] {
                        // Shrunk so that the largest outputs saturate.
                        let yq = out_quant(&r, ybits, 0.8);
                        let op =
                            linear(&w, bias, out, inp, wbits, gran, WeightRange::MinMax, xq, yq)
                                .unwrap();
                        assert_eq!(op.weight.values(), qw.q);
                        let y = op.forward(&QTensor::new(&[t, inp], xi.clone(), xq));
                        assert_eq!(y.shape, vec![t, out]);
                        assert_eq!(y.q, yq);
                        let what = format!("x{xbits} w{wbits} {gran:?} bias {with_bias} y{ybits}");
                        worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
                        let lo = qmin(ybits) as i16;
                        let hi = qmax(ybits) as i16;
                        assert!(y.data.contains(&hi) || y.data.contains(&lo), "{what}");
                    }
                }
            }
        }
        println!("QLinear: largest error {worst:.4} output steps");
    }

    #[test]
    fn linear_worst_case_long_reduction_is_exact() {
        // 16-bit x 8-bit over K = 65536: |acc| = 65536 * 32768 * 127 * 256 ~ 2^46, far beyond i32
        // (a naive i32 accumulator would overflow after 516 terms). Then 8-bit asymmetric input
        // at qmin with zero point 127 (|x - zp| = 255) against int4 -7, per group. Then the widest
        // case, 16-bit x 16-bit: 65536 * 32768 * 32767 * 256 ~ 2^54, still inside i64.
        let k = 65536;
        for (xq, wbits, wval, gran) in [
            (
                ActQuant {
                    scale: 1e-3,
                    zero_point: 0,
                    bits: 16,
                },
                8u32,
                -127i16,
                Granularity::PerChannel,
            ),
            (
                ActQuant {
                    scale: 1e-3,
                    zero_point: 0,
                    bits: 16,
                },
                16,
                -32767,
                Granularity::PerChannel,
            ),
            (
                ActQuant {
                    scale: 1e-2,
                    zero_point: 127,
                    bits: 8,
                },
                4,
                -7,
                Granularity::PerGroup(64),
            ),
        ] {
            let out = 2;
            let qw = QuantWeight {
                out,
                inp: k,
                bits: wbits,
                group: match gran {
                    Granularity::PerGroup(g) => g,
                    _ => k,
                },
                q: vec![wval; out * k],
                row_scale: vec![0.01, 0.02],
                group_mult: if let Granularity::PerGroup(g) = gran {
                    (0..out * k / g).map(|i| 256 - (i % 200) as u16).collect()
                } else {
                    vec![256; out]
                },
            };
            // Output range: the real worst-case sum (1.1x, so nothing saturates).
            let xc0 = (qmin(xq.bits) - xq.zero_point as i64) as f64;
            let real_max = xc0.abs() * (wval as f64).abs() * k as f64 * xq.scale as f64 * 0.02;
            let yq = ActQuant::from_range(-1.1 * real_max as f32, 1.1 * real_max as f32, 16, true);
            let bias = [123.25f32, -7.5];
            let op = linear_from_quantized(&qw, Some(&bias), xq, yq).unwrap();
            let x = vec![qmin(xq.bits) as i16; k];
            let y = op.forward(&QTensor::new(&[1, k], x, xq));
            for o in 0..out {
                // Exact reference in i128.
                let gm = op.weight.row_group_mult(o);
                let xc = qmin(xq.bits) as i128 - xq.zero_point as i128;
                let acc: i128 = (0..k)
                    .map(|i| xc * wval as i128 * gm[i / op.weight.group] as i128)
                    .sum::<i128>()
                    + op.bias.as_ref().unwrap()[o] as i128;
                assert!(
                    acc.abs() > 4 * i32::MAX as i128,
                    "the accumulator must exceed i32"
                );
                let naive_i32 = (0..k).try_fold(0i32, |a, i| {
                    (xc as i32)
                        .checked_mul(wval as i32)
                        .and_then(|p| p.checked_mul(gm[i / op.weight.group] as i32))
                        .and_then(|p| a.checked_add(p))
                });
                assert!(naive_i32.is_none(), "a naive i32 accumulator overflows");
                let expect = (apply_i128(acc, op.mult[o]) + yq.zero_point as i128)
                    .clamp(qmin(16) as i128, qmax(16) as i128);
                assert_eq!(y.data[o] as i128, expect, "row {o}");
                assert!(y.data[o] > qmin(16) as i16 && y.data[o] < qmax(16) as i16);
            }
        }
    }

    #[test]
    fn linear_a16w8_sqnr_vs_float_gemm() {
        let (t, inp, out) = (16, 512, 64);
        let mut rng = Lcg::new(7);
        let x: Vec<f32> = (0..t * inp).map(|_| rng.gauss()).collect();
        let w: Vec<f32> = (0..out * inp).map(|_| rng.gauss() * 0.05).collect();
        let b: Vec<f32> = (0..out).map(|_| rng.gauss() * 0.1).collect();
        let yf = crate::ops::gemm::linear(&x, t, &w, out, inp, Some(&b));
        let amax = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let xq = ActQuant::from_range(-amax(&x), amax(&x), 16, true);
        let yq = ActQuant::from_range(-amax(&yf), amax(&yf), 16, true);
        let xt = crate::tensor::Tensor::new(&[t, inp], x).unwrap();
        let xi = QTensor::quantize(&xt, xq);
        for (range, gran) in [
            (WeightRange::MinMax, Granularity::PerChannel),
            (WeightRange::Mse, Granularity::PerChannel),
            (WeightRange::MinMax, Granularity::PerGroup(64)),
        ] {
            let op = linear(&w, Some(&b), out, inp, 8, gran, range, xq, yq).unwrap();
            let y = op.forward(&xi).dequantize();
            let db = crate::quant::metrics::sqnr_db(&yf, y.data());
            println!("QLinear A16W8 {range:?} {gran:?}: SQNR {db:.2} dB vs float linear");
            assert!(db > 40.0, "{range:?} {gran:?}: {db} dB");
        }
    }

    #[test]
    fn int4_rows_pack_and_unpack() {
        // Odd row length: every row is packed on its own.
        let (out, inp) = (3, 7);
        let q: Vec<i16> = (0..out * inp).map(|i| (i as i16 % 15) - 7).collect();
        let m = QMatrix::new(out, inp, 4, inp, &q, vec![256; out]).unwrap();
        assert!(matches!(&m.data, PackedWeights::I4(p) if p.len() == out * 4));
        assert_eq!(m.values(), q);
        assert!(QMatrix::new(out, inp, 4, inp, &[8; 21], vec![256; out]).is_err());
        assert!(QMatrix::new(out, inp, 8, inp, &[-128; 21], vec![256; out]).is_err());
        assert!(QMatrix::new(out, inp, 8, 2, &q, vec![256; out]).is_err());
        // 5..=8 bits stay one byte per value; 9..=16 bits take an i16 each.
        let m8 = QMatrix::new(out, inp, 8, inp, &q, vec![256; out]).unwrap();
        assert!(matches!(&m8.data, PackedWeights::I8(v) if v.len() == out * inp));
        let q16: Vec<i16> = (0..out * inp).map(|i| (i as i16 - 10) * 3000).collect();
        let m16 = QMatrix::new(out, inp, 16, inp, &q16, vec![256; out]).unwrap();
        assert!(matches!(&m16.data, PackedWeights::I16(v) if v.len() == out * inp));
        assert_eq!(m16.values(), q16);
        assert!(QMatrix::new(out, inp, 16, inp, &[-32768; 21], vec![256; out]).is_err());
        assert!(QMatrix::new(out, inp, 12, inp, &q16, vec![256; out]).is_err());
        assert!(QMatrix::new(out, inp, 17, inp, &q16, vec![256; out]).is_err());
    }

    #[test]
    fn zero_row_keeps_its_bias_and_overflow_is_rejected() {
        let xq = ActQuant::from_range(-1.0, 1.0, 16, true);
        let yq = ActQuant::from_range(-4.0, 4.0, 16, true);
        let w = [0.0f32, 0.0, 0.5, -0.25];
        let op = linear(
            &w,
            Some(&[1.5, -2.0]),
            2,
            2,
            8,
            Granularity::PerChannel,
            WeightRange::MinMax,
            xq,
            yq,
        )
        .unwrap();
        let y = op.forward(&QTensor::new(&[1, 2], vec![1000, -1000], xq));
        assert_eq!(y.data[0], yq.quantize(1.5) as i16);
        // A bias at the edge of i64 cannot be proven safe.
        let bad = QLinear::new(
            op.weight.clone(),
            Some(vec![i64::MAX - 5, 0]),
            op.mult.clone(),
            xq,
            yq,
        );
        assert!(bad.is_err());
    }
}
