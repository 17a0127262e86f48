//! Validation of an integer graph (`Graph<QOp>`), written once for every architecture: whatever
//! a graph holds (it may come from a file), [`Graph::validate`] either accepts it, and then the
//! integer executor and every op's `forward` can run it without panicking, or names the node and
//! the problem.
//!
//! Per node, in order:
//! - the op's own parameters ([`QOp::validate`]: bit widths, zero points, multipliers, table
//!   sizes, index ranges, accumulator bounds; the checks live on the op structs in
//!   [`crate::quant::ops`]);
//! - its inputs exist and are graph inputs or outputs of earlier nodes, its output is defined
//!   once;
//! - shape and quantization inference ([`QOp::infer`]): the input edges' shapes fit the op, each
//!   input edge's `Elem::Q` is exactly the quantization the op was prepared for, and the output
//!   edge declares what the op produces. This one rule is what the per-architecture
//!   producer/consumer checks of the old artifact spelled out by hand;
//! - the decode-state slots it names exist, are used by no other node, and hold what it reads
//!   (shape and quantization).
//!
//! Plus: unique node names, every value defined exactly once, ports naming existing values.

use super::qop::QOp;
use super::{shape_text, Dim, Elem, Graph, Node, Shape, StateId, StateInfo, ValueInfo};
use crate::error::{Error, Result};
use crate::quant::arith::{check_multipliers, check_reduction, size_product};
use crate::quant::ops::elementwise::ChannelAxis;
use crate::quant::ops::linear::{centered_abs_max, check_act};
use crate::quant::params::ActQuant;
use std::collections::HashSet;

impl QOp {
    /// Checks the op's own parameters (everything its kernel relies on that does not depend on
    /// the graph around it).
    pub fn validate(&self) -> Result<()> {
        match self {
            QOp::Embedding(e) => e.validate(),
            QOp::Linear(l) | QOp::PointwiseToTokens(l) => l.validate(),
            QOp::PointwiseFromTokens { linear, .. } => linear.validate(),
            QOp::TiedLinear { mult, x, y, .. } => {
                check_act("tied projection", "input", x)?;
                check_act("tied projection", "output", y)?;
                check_multipliers("tied projection", "multiplier", mult)
            }
            QOp::RmsNorm(n) => n.validate(),
            QOp::Add(a) => a.validate(),
            QOp::Mul(m) => m.validate(),
            QOp::Lut(l) => l.validate(),
            QOp::CausalConv1d { conv, .. } => conv.validate(),
            QOp::Rope { rope, .. } => rope.validate(),
            QOp::CachedAttention { attn, .. } | QOp::Attention(attn) => attn.validate(),
            QOp::Conv2d(c) => c.validate(),
            QOp::RmsNorm2d(n) => n.validate(),
            QOp::ChannelScale(s) => s.validate(),
            QOp::ResizeNearest(r) => r.validate(),
            QOp::ResizeBilinear(r) => r.validate(),
            QOp::AvgPool(p) => p.validate(),
            QOp::Concat(c) => c.validate(),
            QOp::LayerNorm(n) => n.validate(),
            QOp::ClsPosEmbed(e) => e.validate(),
            QOp::Slice { .. } | QOp::ToTokens | QOp::SliceRows { .. } => Ok(()),
            QOp::PixelShuffle { h, w, scale } => {
                if *scale == 0 || !h.is_multiple_of(*scale) || !w.is_multiple_of(*scale) {
                    return Err(Error::input(format!(
                        "pixel shuffle by {scale} of a {h}x{w} grid"
                    )));
                }
                size_product("pixel shuffle grid", &[*h, *w]).map(|_| ())
            }
        }
    }

    /// The decode-state slots the op reads and writes.
    pub fn states(&self) -> Vec<StateId> {
        match self {
            QOp::CausalConv1d { state, .. } => vec![*state],
            QOp::CachedAttention { k, v, .. } => vec![*k, *v],
            _ => Vec::new(),
        }
    }

    /// The output shape and quantization for `inputs`, checking everything the op's kernel and
    /// the integer executor assume about them (and about the state slots, and, for a tied
    /// projection, the embedding node it reads among `earlier` nodes). Run [`Self::validate`]
    /// first: this relies on the op's own parameters being consistent.
    pub fn infer(
        &self,
        inputs: &[&ValueInfo],
        states: &[StateInfo],
        earlier: &[Node<QOp>],
    ) -> Result<(Shape, ActQuant)> {
        let fail = |m: String| Err(Error::input(m));
        let arity = |n: usize| -> Result<()> {
            if inputs.len() == n {
                Ok(())
            } else {
                Err(Error::input(format!(
                    "takes {n} input(s), got {}",
                    inputs.len()
                )))
            }
        };
        let quant = |k: usize| -> Result<ActQuant> {
            match inputs[k].elem {
                Elem::Q(q) => Ok(q),
                e => Err(Error::input(format!(
                    "input `{}` is {e:?}, not an integer value",
                    inputs[k].name
                ))),
            }
        };
        // The input edge's quantization must be the one the op was prepared for.
        let expect = |k: usize, want: &ActQuant| -> Result<ActQuant> {
            let got = quant(k)?;
            if got != *want {
                return Err(Error::input(format!(
                    "input `{}` is quantized as {got:?}, the op was prepared for {want:?}",
                    inputs[k].name
                )));
            }
            Ok(got)
        };
        let shape = |k: usize| inputs[k].shape.as_slice();
        let x = || shape(0);
        let last = |s: &[Dim]| -> Result<usize> {
            match s.last() {
                Some(Dim::Fixed(n)) => Ok(*n),
                _ => Err(Error::input(format!(
                    "input {} has no fixed last dimension",
                    shape_text(s)
                ))),
            }
        };
        let with_last = |s: &[Dim], n: usize| -> Shape {
            let mut s = s.to_vec();
            if let Some(l) = s.last_mut() {
                *l = Dim::Fixed(n);
            }
            s
        };
        // A fixed, non-empty [C, H, W] map.
        let chw = |s: &[Dim]| -> Result<(usize, usize, usize)> {
            match s {
                [Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)] if *c > 0 && *h > 0 && *w > 0 => {
                    size_product("map", &[*c, *h, *w])?;
                    Ok((*c, *h, *w))
                }
                _ => Err(Error::input(format!(
                    "expected a non-empty fixed [C, H, W] map, got {}",
                    shape_text(s)
                ))),
            }
        };
        // Token rows `[rows, width]` with a fixed width.
        let rows = |s: &[Dim], width: usize| -> Result<Dim> {
            match s {
                [r, Dim::Fixed(w)] if *w == width => Ok(*r),
                _ => Err(Error::input(format!(
                    "expected [rows, {width}] token rows, got {}",
                    shape_text(s)
                ))),
            }
        };
        let state = |id: &StateId| -> Result<&StateInfo> {
            states.get(id.0 as usize).ok_or_else(|| {
                Error::input(format!(
                    "state slot {} does not exist ({} declared)",
                    id.0,
                    states.len()
                ))
            })
        };
        let slot = |id: &StateId, want: &[Dim], q: &ActQuant| -> Result<()> {
            let s = state(id)?;
            if s.shape != want || s.elem != Elem::Q(*q) {
                return Err(Error::input(format!(
                    "state slot `{}` is {} in {:?}, the op needs {} in {q:?}",
                    s.name,
                    shape_text(&s.shape),
                    s.elem,
                    shape_text(want)
                )));
            }
            Ok(())
        };
        match self {
            QOp::Embedding(e) => {
                arity(1)?;
                match (x(), inputs[0].elem) {
                    ([t], Elem::Token) => Ok((vec![*t, Dim::Fixed(e.dim())], e.y)),
                    (s, el) => fail(format!(
                        "expects token ids [T], got {} in {el:?}",
                        shape_text(s)
                    )),
                }
            }
            QOp::Linear(l) => {
                arity(1)?;
                expect(0, &l.x)?;
                if last(x())? != l.in_features() {
                    return fail(format!(
                        "input {} for {} input features",
                        shape_text(x()),
                        l.in_features()
                    ));
                }
                Ok((with_last(x(), l.out_features()), l.y))
            }
            QOp::TiedLinear {
                table,
                mult,
                x: qx,
                y,
            } => {
                arity(1)?;
                let e = match earlier.get(*table).map(|n| (&n.name, &n.op)) {
                    Some((_, QOp::Embedding(e))) => e,
                    Some((name, op)) => {
                        return fail(format!(
                            "reads the table of node {table} (`{name}`), a {}, not an embedding",
                            op.kind()
                        ))
                    }
                    None => {
                        return fail(format!(
                            "reads the table of node {table}, which is not an earlier node"
                        ))
                    }
                };
                let w = &e.table;
                if mult.len() != w.out {
                    return fail(format!(
                        "{} multipliers for the {} rows of the table",
                        mult.len(),
                        w.out
                    ));
                }
                check_reduction(
                    "tied projection",
                    w.inp,
                    centered_abs_max(qx),
                    w.effective_abs_max(),
                    0,
                )?;
                expect(0, qx)?;
                if last(x())? != w.inp {
                    return fail(format!(
                        "input {} for a table of width {}",
                        shape_text(x()),
                        w.inp
                    ));
                }
                Ok((with_last(x(), w.out), *y))
            }
            QOp::RmsNorm(n) => {
                arity(1)?;
                expect(0, &n.x)?;
                if n.dim == 0 || last(x())? % n.dim != 0 {
                    return fail(format!(
                        "input {} is not made of rows of {}",
                        shape_text(x()),
                        n.dim
                    ));
                }
                Ok((x().to_vec(), n.y))
            }
            QOp::Slice { start, len } => {
                arity(1)?;
                let q = quant(0)?;
                let end = start.checked_add(*len);
                if *len == 0 || end.is_none_or(|e| e > last(x()).unwrap_or(0)) {
                    return fail(format!("slice {start}+{len} of {}", shape_text(x())));
                }
                Ok((with_last(x(), *len), q))
            }
            QOp::Add(a) => {
                arity(2)?;
                expect(0, &a.a)?;
                expect(1, &a.b)?;
                same_shapes(inputs)?;
                Ok((x().to_vec(), a.y))
            }
            QOp::Mul(m) => {
                arity(2)?;
                expect(0, &m.a)?;
                expect(1, &m.b)?;
                same_shapes(inputs)?;
                Ok((x().to_vec(), m.y))
            }
            QOp::Lut(l) => {
                arity(1)?;
                expect(0, &l.x)?;
                Ok((x().to_vec(), l.y))
            }
            QOp::CausalConv1d { conv, state: s } => {
                arity(1)?;
                expect(0, &conv.x)?;
                let c = conv.channels();
                rows(x(), c)?;
                let keep = conv
                    .kernel_size()
                    .checked_sub(1)
                    .ok_or_else(|| Error::input("a causal conv without taps"))?;
                slot(s, &[Dim::Fixed(keep), Dim::Fixed(c)], &conv.x)?;
                Ok((x().to_vec(), conv.y))
            }
            QOp::Rope { rope, heads } => {
                arity(1)?;
                expect(0, &rope.x)?;
                let row = size_product("rope row", &[*heads, rope.head_dim])?;
                if row == 0 {
                    return fail("rope over zero heads".into());
                }
                rows(x(), row)?;
                Ok((x().to_vec(), rope.y))
            }
            QOp::CachedAttention { attn: a, k, v } => {
                arity(3)?;
                if k == v {
                    return fail(format!("keys and values share state slot {}", k.0));
                }
                expect(0, &a.q)?;
                expect(1, &a.k)?;
                expect(2, &a.v)?;
                let kw = size_product("keys", &[a.n_kv, a.d])?;
                let vw = size_product("values", &[a.n_kv, a.dv])?;
                let t = rows(x(), size_product("queries", &[a.n_heads, a.d])?)?;
                if rows(shape(1), kw)? != t || rows(shape(2), vw)? != t {
                    return fail(format!(
                        "q {}, k {}, v {}: new keys and values need the queries' rows",
                        shape_text(x()),
                        shape_text(shape(1)),
                        shape_text(shape(2))
                    ));
                }
                slot(k, &[Dim::Past, Dim::Fixed(kw)], &a.k)?;
                slot(v, &[Dim::Past, Dim::Fixed(vw)], &a.v)?;
                let out = size_product("attention output", &[a.n_heads, a.dv])?;
                Ok((vec![t, Dim::Fixed(out)], a.out))
            }
            QOp::Attention(a) => {
                arity(3)?;
                expect(0, &a.q)?;
                expect(1, &a.k)?;
                expect(2, &a.v)?;
                let tq = rows(x(), size_product("queries", &[a.n_heads, a.d])?)?;
                let tk = rows(shape(1), size_product("keys", &[a.n_kv, a.d])?)?;
                if rows(shape(2), size_product("values", &[a.n_kv, a.dv])?)? != tk {
                    return fail(format!(
                        "k {} and v {} differ in rows",
                        shape_text(shape(1)),
                        shape_text(shape(2))
                    ));
                }
                let out = size_product("attention output", &[a.n_heads, a.dv])?;
                Ok((vec![tq, Dim::Fixed(out)], a.out))
            }
            QOp::Conv2d(c) => {
                arity(1)?;
                expect(0, &c.x)?;
                let (ch, h, w) = chw(x())?;
                if ch != c.c_in {
                    return fail(format!("{ch} input channels, prepared for {}", c.c_in));
                }
                let p = c.pad;
                let oh = conv_out(h, c.kh, c.stride, c.dilation, p.top, p.bottom);
                let ow = conv_out(w, c.kw, c.stride, c.dilation, p.left, p.right);
                match (oh, ow) {
                    (Some(oh), Some(ow)) => Ok((super::fixed(&[c.c_out, oh, ow]), c.y)),
                    _ => fail(format!(
                        "a {}x{} kernel (dilation {}) does not fit the padded {h}x{w} input",
                        c.kh, c.kw, c.dilation
                    )),
                }
            }
            QOp::RmsNorm2d(n) => {
                arity(1)?;
                expect(0, &n.norm.x)?;
                let (c, _, _) = chw(x())?;
                if c != n.channels() {
                    return fail(format!("{c} channels, prepared for {}", n.channels()));
                }
                Ok((x().to_vec(), n.norm.y))
            }
            QOp::ChannelScale(s) => {
                arity(1)?;
                expect(0, &s.x)?;
                let c = s.channels();
                let ok = match s.axis {
                    ChannelAxis::First => x().first() == Some(&Dim::Fixed(c)),
                    ChannelAxis::Last => x().last() == Some(&Dim::Fixed(c)),
                };
                if !ok {
                    return fail(format!(
                        "input {} for {c} channels along {:?}",
                        shape_text(x()),
                        s.axis
                    ));
                }
                Ok((x().to_vec(), s.y))
            }
            QOp::PointwiseToTokens(l) => {
                arity(1)?;
                expect(0, &l.x)?;
                let (c, h, w) = chw(x())?;
                if c != l.in_features() {
                    return fail(format!("{c} channels for {} inputs", l.in_features()));
                }
                Ok((super::fixed(&[h * w, l.out_features()]), l.y))
            }
            QOp::PointwiseFromTokens { linear: l, h, w } => {
                arity(1)?;
                expect(0, &l.x)?;
                let hw = size_product("token grid", &[*h, *w])?;
                if hw == 0 || x() != super::fixed(&[hw, l.in_features()]).as_slice() {
                    return fail(format!(
                        "input {} is not [{h} x {w}, {}] tokens",
                        shape_text(x()),
                        l.in_features()
                    ));
                }
                Ok((super::fixed(&[l.out_features(), *h, *w]), l.y))
            }
            QOp::ResizeNearest(r) => {
                arity(1)?;
                let q = quant(0)?;
                let (c, h, w) = chw(x())?;
                if (h, w) != (r.h, r.w) {
                    return fail(format!("{h}x{w} input, prepared for {}x{}", r.h, r.w));
                }
                let (oh, ow) = r.out_size();
                Ok((super::fixed(&[c, oh, ow]), q))
            }
            QOp::ResizeBilinear(r) => {
                arity(1)?;
                expect(0, &r.x)?;
                let (c, h, w) = chw(x())?;
                if (h, w) != (r.h, r.w) {
                    return fail(format!("{h}x{w} input, prepared for {}x{}", r.h, r.w));
                }
                let (oh, ow) = r.out_size();
                Ok((super::fixed(&[c, oh, ow]), r.y))
            }
            QOp::AvgPool(p) => {
                arity(1)?;
                expect(0, &p.x)?;
                let (c, h, w) = chw(x())?;
                if p.kh == 0 || p.kw == 0 || h < p.kh || w < p.kw {
                    return fail(format!("{}x{} kernel on {h}x{w}", p.kh, p.kw));
                }
                Ok((super::fixed(&[c, h / p.kh, w / p.kw]), p.y))
            }
            QOp::Concat(cat) => {
                if cat.parts.is_empty() {
                    return fail("a concatenation of nothing".into());
                }
                arity(cat.parts.len())?;
                let (_, h, w) = chw(x())?;
                let mut c = 0usize;
                for (k, part) in cat.parts.iter().enumerate() {
                    expect(k, &part.x)?;
                    let (ck, hk, wk) = chw(shape(k))?;
                    if (hk, wk) != (h, w) {
                        return fail(format!(
                            "input {} does not match {h}x{w}",
                            shape_text(shape(k))
                        ));
                    }
                    c = c
                        .checked_add(ck)
                        .ok_or_else(|| Error::input("concat: channel count overflows"))?;
                }
                Ok((super::fixed(&[c, h, w]), cat.y))
            }
            QOp::ToTokens => {
                arity(1)?;
                let q = quant(0)?;
                let (c, h, w) = chw(x())?;
                Ok((super::fixed(&[h * w, c]), q))
            }
            QOp::LayerNorm(n) => {
                arity(1)?;
                expect(0, &n.x)?;
                if last(x())? != n.dim {
                    return fail(format!("input {} for rows of {}", shape_text(x()), n.dim));
                }
                Ok((x().to_vec(), n.y))
            }
            QOp::SliceRows { start, len } => {
                arity(1)?;
                let q = quant(0)?;
                match x() {
                    [Dim::Fixed(t), Dim::Fixed(d)]
                        if *len > 0 && start.checked_add(*len).is_some_and(|e| e <= *t) =>
                    {
                        Ok((super::fixed(&[*len, *d]), q))
                    }
                    s => fail(format!("rows {start}+{len} of {}", shape_text(s))),
                }
            }
            QOp::ClsPosEmbed(e) => {
                arity(1)?;
                expect(0, &e.x)?;
                if x() != super::fixed(&[e.tokens, e.dim]).as_slice() {
                    return fail(format!(
                        "input {}, prepared for [{}, {}]",
                        shape_text(x()),
                        e.tokens,
                        e.dim
                    ));
                }
                Ok((super::fixed(&[e.tokens + 1, e.dim]), e.y))
            }
            QOp::PixelShuffle { h, w, scale: s } => {
                arity(1)?;
                let q = quant(0)?;
                let hw = size_product("pixel shuffle grid", &[*h, *w])?;
                match x() {
                    [Dim::Fixed(t), Dim::Fixed(c)] if *t == hw => {
                        let c = size_product("pixel shuffle channels", &[*s, *s, *c])?;
                        Ok((super::fixed(&[(h / s) * (w / s), c]), q))
                    }
                    x => fail(format!(
                        "input {} is not [{h} x {w}, C] tokens",
                        shape_text(x)
                    )),
                }
            }
        }
    }
}

fn same_shapes(inputs: &[&ValueInfo]) -> Result<()> {
    if inputs[0].shape != inputs[1].shape {
        return Err(Error::input(format!(
            "input shapes {} and {} differ",
            shape_text(&inputs[0].shape),
            shape_text(&inputs[1].shape)
        )));
    }
    Ok(())
}

/// `(n + pads - span) / stride + 1` with `span = dilation * (k - 1) + 1`, or `None` when the
/// kernel does not fit (or the arithmetic overflows).
fn conv_out(
    n: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    p0: usize,
    p1: usize,
) -> Option<usize> {
    let span = dilation.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let padded = n.checked_add(p0)?.checked_add(p1)?;
    Some(padded.checked_sub(span)?.checked_div(stride)? + 1)
}

impl Graph<QOp> {
    /// Checks the whole graph (see the module docs); errors name the node and its op kind.
    pub fn validate(&self) -> Result<()> {
        let nv = self.values.len();
        if !self.params.is_empty() {
            return Err(Error::input(format!(
                "an integer graph carries no float weights, this one lists {}",
                self.params.len()
            )));
        }
        let value = |id: super::ValueId, what: &str| -> Result<&ValueInfo> {
            self.values.get(id.0 as usize).ok_or_else(|| {
                Error::input(format!("{what} is value {}, but there are {nv}", id.0))
            })
        };
        let mut defined = vec![false; nv];
        for &v in &self.inputs {
            let info = value(v, "a graph input")?;
            if std::mem::replace(&mut defined[v.0 as usize], true) {
                return Err(Error::input(format!(
                    "`{}` is listed twice as an input",
                    info.name
                )));
            }
            let elem_ok = matches!(info.elem, Elem::Token | Elem::Q(_));
            let dims_ok = info
                .shape
                .iter()
                .all(|d| matches!(d, Dim::Fixed(_) | Dim::Seq));
            if !elem_ok || !dims_ok {
                return Err(Error::input(format!(
                    "input `{}` is {} in {:?}: integer graph inputs are token ids or integers \
                     with fixed or `T` dimensions",
                    info.name,
                    shape_text(&info.shape),
                    info.elem
                )));
            }
            if let Elem::Q(q) = &info.elem {
                check_act("input", &info.name, q)?;
            }
        }
        for s in &self.states {
            let shape_ok = match s.shape.as_slice() {
                [Dim::Past, Dim::Fixed(_)] => true,
                dims => dims.iter().all(|d| matches!(d, Dim::Fixed(_))),
            };
            if !shape_ok || !matches!(s.elem, Elem::Q(_)) {
                return Err(Error::input(format!(
                    "state slot `{}` is {} in {:?}: integer slots are fixed windows or [P, width] \
                     rows of integers",
                    s.name,
                    shape_text(&s.shape),
                    s.elem
                )));
            }
        }
        let mut names = HashSet::new();
        let mut slot_users: Vec<Option<&str>> = vec![None; self.states.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            let at = |e: Error| {
                let msg = match e {
                    Error::Input(m) => m,
                    e => e.to_string(),
                };
                Error::input(format!("node `{}` ({}): {msg}", node.name, node.op.kind()))
            };
            if !names.insert(node.name.as_str()) {
                return Err(at(Error::input("the name is used by an earlier node")));
            }
            let mut ins = Vec::with_capacity(node.inputs.len());
            for (k, &v) in node.inputs.iter().enumerate() {
                let info = value(v, &format!("input {k}")).map_err(at)?;
                if !defined[v.0 as usize] {
                    return Err(at(Error::input(format!(
                        "input `{}` is neither a graph input nor computed by an earlier node",
                        info.name
                    ))));
                }
                ins.push(info);
            }
            let out = value(node.output, "the output").map_err(at)?;
            if std::mem::replace(&mut defined[node.output.0 as usize], true) {
                return Err(at(Error::input(format!(
                    "output `{}` is already defined",
                    out.name
                ))));
            }
            if out.name != node.name {
                return Err(at(Error::input(format!(
                    "the output value is named `{}`",
                    out.name
                ))));
            }
            for s in node.op.states() {
                if let Some(user) = slot_users.get_mut(s.0 as usize) {
                    if let Some(other) = user.replace(&node.name) {
                        return Err(at(Error::input(format!(
                            "state slot `{}` is also used by `{other}`",
                            self.states[s.0 as usize].name
                        ))));
                    }
                }
            }
            node.op.validate().map_err(at)?;
            let (shape, y) = node
                .op
                .infer(&ins, &self.states, &self.nodes[..i])
                .map_err(at)?;
            if out.shape != shape || out.elem != Elem::Q(y) {
                return Err(at(Error::input(format!(
                    "the output edge declares {} in {:?}, the op produces {} in {y:?}",
                    shape_text(&out.shape),
                    out.elem,
                    shape_text(&shape)
                ))));
            }
        }
        if let Some(v) = defined.iter().position(|d| !d) {
            return Err(Error::input(format!(
                "value `{}` is neither a graph input nor computed by a node",
                self.values[v].name
            )));
        }
        let mut roles = HashSet::new();
        for (role, v) in &self.ports {
            value(*v, &format!("port `{role}`"))?;
            if !roles.insert(role.as_str()) {
                return Err(Error::input(format!("port `{role}` is declared twice")));
            }
        }
        Ok(())
    }
}
