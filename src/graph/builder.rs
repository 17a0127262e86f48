//! The typed API architecture builders record a graph with, so a builder reads like the
//! reference forward:
//!
//! ```text
//! let bcx = b.linear(&format!("{p}.in_proj"), x, 3 * h, bias)?;
//! let [bb, c, xx] = b.split3(&format!("{p}.in_proj"), bcx)?;
//! let bx = b.mul(&format!("{p}.bx"), bb, xx)?;
//! ```
//!
//! Every call infers the output shape immediately ([`Op::infer`]), so a builder fails at build
//! time, naming the node, before any weight is read. Weights are declared by checkpoint key
//! (`<root>.<node>.weight`); a [`WeightSource`] answers which optional weights a checkpoint holds.

use super::{
    Dim, Elem, Graph, Node, Op, ParamId, ParamInfo, Shape, StateId, StateInfo, ValueId, ValueInfo,
};
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::weights::WeightStore;

/// What a builder may ask of the weights before loading them.
pub trait WeightSource {
    /// The stored shape of `key`, or `None` when the source does not hold it.
    fn shape(&self, key: &str) -> Option<Vec<usize>>;
    /// `false` for sources that describe no checkpoint (presets, random initialisation): optional
    /// weights then follow the config.
    fn is_checkpoint(&self) -> bool {
        true
    }
}

impl WeightSource for WeightStore {
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        WeightStore::shape(self, key).map(|s| s.to_vec())
    }
}

/// No checkpoint: every weight the config implies exists, with the shape the builder declares.
pub struct FromConfig;

impl WeightSource for FromConfig {
    fn shape(&self, _key: &str) -> Option<Vec<usize>> {
        None
    }
    fn is_checkpoint(&self) -> bool {
        false
    }
}

pub struct GraphBuilder<'a> {
    g: Graph,
    src: &'a dyn WeightSource,
    /// Checkpoint prefix of this part's weights (`model.language_model`), without the dot.
    root: String,
}

impl<'a> GraphBuilder<'a> {
    pub fn new(src: &'a dyn WeightSource, root: &str) -> Self {
        Self {
            g: Graph {
                inputs: Vec::new(),
                values: Vec::new(),
                nodes: Vec::new(),
                params: Vec::new(),
                states: Vec::new(),
                ports: Vec::new(),
            },
            src,
            root: root.to_string(),
        }
    }

    pub fn finish(self) -> Graph {
        self.g
    }

    /// Marks `v` as the value playing `role` for the code around the graph.
    pub fn port(&mut self, role: &str, v: ValueId) {
        self.g.ports.push((role.to_string(), v));
    }

    /// The full checkpoint key of `rel` (a key below this part's root).
    pub fn key(&self, rel: &str) -> String {
        if self.root.is_empty() {
            rel.to_string()
        } else {
            format!("{}.{rel}", self.root)
        }
    }

    /// Whether the checkpoint holds the optional weight `rel`; `expected` (from the config)
    /// answers for sources without a checkpoint.
    pub fn has(&self, rel: &str, expected: bool) -> bool {
        if self.src.is_checkpoint() {
            self.src.shape(&self.key(rel)).is_some()
        } else {
            expected
        }
    }

    /// The stored shape of `rel`, if the source has a checkpoint holding it.
    pub fn stored_shape(&self, rel: &str) -> Option<Vec<usize>> {
        self.src.shape(&self.key(rel))
    }

    /// Declares weight `rel` (below the root) of `shape`; the same key twice is one weight.
    pub fn param(&mut self, rel: &str, shape: &[usize]) -> Result<ParamId> {
        let key = self.key(rel);
        self.param_at(&key, shape)
    }

    /// Declares a weight by its full checkpoint key.
    pub fn param_at(&mut self, key: &str, shape: &[usize]) -> Result<ParamId> {
        if let Some(i) = self.g.params.iter().position(|p| p.key == key) {
            if self.g.params[i].shape != shape {
                return Err(Error::config(format!(
                    "weight `{key}` is used as {:?} and as {shape:?}",
                    self.g.params[i].shape
                )));
            }
            return Ok(ParamId(i as u32));
        }
        self.g.params.push(ParamInfo {
            key: key.to_string(),
            shape: shape.to_vec(),
        });
        Ok(ParamId(self.g.params.len() as u32 - 1))
    }

    pub fn input(&mut self, name: &str, shape: Shape, elem: Elem) -> ValueId {
        let v = self.push_value(name, shape, elem);
        self.g.inputs.push(v);
        v
    }

    /// A decode-state slot.
    pub fn state(&mut self, name: &str, shape: Shape) -> StateId {
        self.g.states.push(StateInfo {
            name: name.to_string(),
            shape,
            elem: Elem::F32,
        });
        StateId(self.g.states.len() as u32 - 1)
    }

    fn push_value(&mut self, name: &str, shape: Shape, elem: Elem) -> ValueId {
        self.g.values.push(ValueInfo {
            name: name.to_string(),
            shape,
            elem,
        });
        ValueId(self.g.values.len() as u32 - 1)
    }

    /// Adds an observed node named `name`.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        self.push_node(name, op, inputs, true)
    }

    /// Adds a node whose output is not reported to observers (an internal step).
    pub fn internal(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        self.push_node(name, op, inputs, false)
    }

    fn push_node(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[ValueId],
        observed: bool,
    ) -> Result<ValueId> {
        if self.g.find(name).is_some() {
            return Err(Error::config(format!(
                "graph node `{name}` is defined twice"
            )));
        }
        let infos: Vec<&ValueInfo> = inputs.iter().map(|v| self.g.value(*v)).collect();
        let (shape, elem) = op
            .infer(&infos, &self.g.params, &self.g.states)
            .map_err(|e| Error::config(format!("graph node `{name}`: {e}")))?;
        let output = self.push_value(name, shape, elem);
        self.g.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            output,
            observed,
            aliases: Vec::new(),
        });
        Ok(output)
    }

    /// Also reports `v` (a node output) as `name`.
    pub fn alias(&mut self, v: ValueId, name: &str) -> Result<()> {
        let taken = self.g.find(name).is_some()
            || self
                .g
                .nodes
                .iter()
                .any(|n| n.aliases.iter().any(|a| a == name));
        let node = self.g.nodes.iter_mut().find(|n| n.output == v);
        match node {
            Some(n) if !taken => {
                n.aliases.push(name.to_string());
                Ok(())
            }
            _ => Err(Error::config(format!(
                "cannot report `{name}` as an alias (taken, or not a node output)"
            ))),
        }
    }

    pub fn shape(&self, v: ValueId) -> &[Dim] {
        &self.g.value(v).shape
    }

    /// The fixed size of dimension `axis` of `v` (negative counts from the end).
    pub fn dim(&self, v: ValueId, axis: isize) -> Result<usize> {
        let s = self.shape(v);
        let i = if axis < 0 {
            s.len() as isize + axis
        } else {
            axis
        };
        s.get(i as usize).and_then(|d| d.fixed()).ok_or_else(|| {
            Error::config(format!(
                "`{}` has no fixed dimension {axis} ({})",
                self.g.value(v).name,
                super::shape_text(s)
            ))
        })
    }

    // ---- typed helpers: one per reference module shape -----------------------------------

    /// `nn.Linear(in, out, bias)` named `name` (weights `<name>.weight`, `<name>.bias`).
    pub fn linear(&mut self, name: &str, x: ValueId, out: usize, bias: bool) -> Result<ValueId> {
        let inp = self.dim(x, -1)?;
        let weight = self.param(&format!("{name}.weight"), &[out, inp])?;
        let bias = bias
            .then(|| self.param(&format!("{name}.bias"), &[out]))
            .transpose()?;
        self.node(name, Op::Linear { weight, bias }, &[x])
    }

    /// A linear layer over an existing weight (a tied output projection).
    pub fn linear_with(&mut self, name: &str, x: ValueId, weight: ParamId) -> Result<ValueId> {
        self.node(name, Op::Linear { weight, bias: None }, &[x])
    }

    /// RMSNorm over groups of `dim` of the last dimension (`<name>.weight` of `[dim]`).
    pub fn rms_norm(&mut self, name: &str, x: ValueId, dim: usize, eps: f32) -> Result<ValueId> {
        let weight = self.param(&format!("{name}.weight"), &[dim])?;
        self.node(name, Op::RmsNorm { weight, eps }, &[x])
    }

    /// `nn.LayerNorm(dim)` over the last dimension (`<name>.weight`, `<name>.bias`).
    pub fn layer_norm(&mut self, name: &str, x: ValueId, eps: f32) -> Result<ValueId> {
        let d = self.dim(x, -1)?;
        let weight = self.param(&format!("{name}.weight"), &[d])?;
        let bias = Some(self.param(&format!("{name}.bias"), &[d])?);
        self.node(name, Op::LayerNorm { weight, bias, eps }, &[x])
    }

    /// timm `RmsNorm2d` (`<name>.weight`).
    pub fn rms_norm_2d(&mut self, name: &str, x: ValueId, eps: f32) -> Result<ValueId> {
        let c = self.dim(x, 0)?;
        let weight = self.param(&format!("{name}.weight"), &[c])?;
        self.node(name, Op::RmsNorm2d { weight, eps }, &[x])
    }

    /// Splits the last dimension into three equal chunks (`torch.chunk(x, 3, -1)`), named
    /// `<name>.0`, `<name>.1`, `<name>.2` and not observed.
    pub fn split3(&mut self, name: &str, x: ValueId) -> Result<[ValueId; 3]> {
        let d = self.dim(x, -1)?;
        if d % 3 != 0 {
            return Err(Error::config(format!(
                "`{name}`: {d} does not split in three"
            )));
        }
        let len = d / 3;
        let mut out = [x; 3];
        for (i, o) in out.iter_mut().enumerate() {
            let op = Op::Slice {
                start: i * len,
                len,
            };
            *o = self.internal(&format!("{name}.{i}"), op, &[x])?;
        }
        Ok(out)
    }

    /// Causal attention of a decoder layer over this call's rows and the positions before them:
    /// rotate-half RoPE on `q` (`heads` wide) and `k` (`kv_heads` wide) at the sequence position
    /// (`<p>.rope_q`, `<p>.rope_k`), post-RoPE keys and values appended to the state slots
    /// `<p>.k` / `<p>.v`, SDPA with scale `head_dim^-0.5` (`<p>.sdpa`). LFM2's and Llama's
    /// attention differ only before (q/k norms) and in their projections' names.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_cached_attention(
        &mut self,
        p: &str,
        [q, k, v]: [ValueId; 3],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        theta: f64,
    ) -> Result<ValueId> {
        let rope = |heads| Op::Rope {
            heads,
            head_dim,
            theta,
        };
        let q = self.node(&format!("{p}.rope_q"), rope(heads), &[q])?;
        let k = self.node(&format!("{p}.rope_k"), rope(kv_heads), &[k])?;
        let kv = vec![super::Dim::Past, super::Dim::Fixed(kv_heads * head_dim)];
        let (ks, vs) = (
            self.state(&format!("{p}.k"), kv.clone()),
            self.state(&format!("{p}.v"), kv),
        );
        let sdpa = Op::CachedAttention {
            heads,
            kv_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5) as f32,
            k: ks,
            v: vs,
        };
        self.node(&format!("{p}.sdpa"), sdpa, &[q, k, v])
    }

    pub fn add(&mut self, name: &str, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node(name, Op::Add, &[a, b])
    }

    pub fn mul(&mut self, name: &str, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node(name, Op::Mul, &[a, b])
    }

    pub fn act(&mut self, name: &str, act: Activation, x: ValueId) -> Result<ValueId> {
        self.node(name, Op::Act(act), &[x])
    }
}
