//! End to end through calibration and lowering for the ops InternViT and the InternVL projector
//! add: a hand-built float graph `LayerNorm -> ClsPosEmbed -> ChannelScale (tokens) -> SliceRows
//! -> PixelShuffle -> LayerNorm` is calibrated on random inputs with the calibration observer,
//! lowered, validated, written through the artifact's array adapter and read back, run by the
//! integer executor and compared with the float program node by node.
#![allow(clippy::float_arithmetic)]

use crate::artifact::{array, QuantizedModel, FORMAT_VERSION};
use crate::exec::{FloatProgram, IntProgram, QVal, Val};
use crate::graph::builder::FromConfig;
use crate::graph::cost::GraphCost;
use crate::graph::qop::QOp;
use crate::graph::{fixed, Bindings, Elem, Graph, GraphBuilder, Op, ValueId};
use crate::observe::Recorder;
use crate::quant::calibrate::{CalibrationObserver, CalibrationStats, DEFAULT_BINS};
use crate::quant::lower::lower;
use crate::quant::metrics::sqnr_db;
use crate::quant::ops::elementwise::ChannelAxis;
use crate::quant::ops::lut::test_rng::Lcg;
use crate::quant::params::ActQuant;
use crate::quant::scheme::{Part, Scheme};
use crate::quant::tensor::QTensor;
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// Patch tokens of a 4 x 4 grid, 8 wide.
const GRID: usize = 4;
const N: usize = GRID * GRID;
const D: usize = 8;
/// Every node of the graph, in order.
const NODES: [&str; 6] = [
    "pre_norm",
    "embeddings",
    "encoder.layers.0.ls1",
    "drop_cls",
    "pixel_shuffle",
    "mlp1.0",
];

fn graph() -> Graph {
    let mut b = GraphBuilder::new(&FromConfig, "vision_model");
    let x = b.input("patches", fixed(&[N, D]), Elem::F32);
    let ln = b.layer_norm("pre_norm", x, 1e-6).unwrap();
    let cls = b.param("embeddings.class_embedding", &[1, 1, D]).unwrap();
    let pos = b
        .param("embeddings.position_embedding", &[1, N + 1, D])
        .unwrap();
    let op = Op::ClsPosEmbed {
        cls,
        pos: Some(pos),
    };
    let e = b.node("embeddings", op, &[ln]).unwrap();
    let gamma = b.param("encoder.layers.0.ls1", &[D]).unwrap();
    let s = b
        .node("encoder.layers.0.ls1", Op::ChannelScale { gamma }, &[e])
        .unwrap();
    let r = b
        .node("drop_cls", Op::SliceRows { start: 1, len: N }, &[s])
        .unwrap();
    let op = Op::PixelShuffle {
        h: GRID,
        w: GRID,
        scale: 2,
    };
    let p = b.node("pixel_shuffle", op, &[r]).unwrap();
    let y = b.layer_norm("mlp1.0", p, 1e-5).unwrap();
    b.port("features", y);
    b.finish()
}

/// Weights of InternViT-like magnitudes: norm weights around 1 with biases, class and position
/// embeddings `+-0.5`, layer scales `0.1 +- 0.05` (one negative).
fn program(seed: u64) -> FloatProgram {
    let g = graph();
    let mut rng = Lcg::new(seed);
    let params = g
        .params
        .iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|i| {
                    let u = rng.uniform() as f32 * 2.0 - 1.0;
                    match p.key.rsplit('.').next().unwrap() {
                        "weight" => 1.0 + 0.3 * u,
                        "bias" => 0.2 * u,
                        "ls1" if i == 3 => -0.08,
                        "ls1" => 0.1 + 0.05 * u,
                        _ => 0.5 * u,
                    }
                })
                .collect();
            Tensor::new(&p.shape, data).unwrap()
        })
        .collect();
    FloatProgram::new(g, params).unwrap()
}

/// Patch rows with a per-row offset and per-channel spread (LayerNorm's mean matters).
fn patches(rng: &mut Lcg) -> Tensor {
    let chan: Vec<f64> = (0..D).map(|j| 0.5 + j as f64 * 0.3).collect();
    let mut data = Vec::with_capacity(N * D);
    for _ in 0..N {
        let off = rng.normal() * 2.0;
        for s in &chan {
            data.push((off + 0.3 + s * rng.normal()) as f32);
        }
    }
    Tensor::new(&[N, D], data).unwrap()
}

fn io(prog: &FloatProgram) -> (ValueId, ValueId) {
    let g = &prog.graph;
    (g.inputs[0], g.port("features").unwrap())
}

/// Calibration statistics of every node from `inputs`, and the input quantization covering them.
fn calibrate(prog: &FloatProgram, inputs: &[Tensor], abits: u32) -> (CalibrationStats, ActQuant) {
    let (x, out) = io(prog);
    let mut obs = CalibrationObserver::new(DEFAULT_BINS).unwrap();
    obs.set_part(Part::Vision);
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for t in inputs {
        for &v in t.data() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        prog.run(vec![(x, Val::F(t.clone()))], &[out], None, &mut obs)
            .unwrap();
    }
    (
        obs.into_stats(),
        ActQuant::from_range(lo, hi, abits, abits >= 16),
    )
}

/// Every observed node's output, by name.
fn record_float(prog: &FloatProgram, t: &Tensor) -> BTreeMap<String, Tensor> {
    let (x, out) = io(prog);
    let mut rec = Recorder::new(|_: &str| true);
    prog.run(vec![(x, Val::F(t.clone()))], &[out], None, &mut rec)
        .unwrap();
    rec.tensors
}

fn record_int(prog: &IntProgram, t: &Tensor, xq: ActQuant) -> BTreeMap<String, Tensor> {
    let g = &prog.graph;
    let (x, out) = (g.inputs[0], g.port("features").unwrap());
    let mut rec = Recorder::new(|_: &str| true);
    let feed = QVal::Q(QTensor::quantize(t, xq));
    prog.run(vec![(x, feed)], &[out], None, &mut rec).unwrap();
    rec.tensors
}

/// The lowered graph round-trips through `graph.json` text and `quantized.safetensors` arrays.
fn artifact_round_trip(g: &Graph<QOp>) {
    let model = QuantizedModel {
        format_version: FORMAT_VERSION,
        scheme: "w8a16".into(),
        image_size: None,
        vision: None,
        connector: None,
        image_to_embed: None,
        text: g.clone(),
    };
    let (text, arrays) = model.to_files().unwrap();
    for key in [
        "text.pre_norm.w_mult",
        "text.pre_norm.w_neg",
        "text.pre_norm.bias",
        "text.embeddings.cls",
        "text.embeddings.pos",
        "text.encoder.layers.0.ls1.mult",
    ] {
        assert!(
            arrays.contains_key(key),
            "{key} missing: {:?}",
            arrays.keys()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quantized.safetensors");
    let views: Vec<_> = arrays
        .iter()
        .map(|(k, a)| {
            let v = safetensors::tensor::TensorView::new(a.dtype, a.shape.clone(), &a.bytes);
            (k.clone(), v.unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let source = array::ArraySource::open(&path).unwrap();
    let (back, source) =
        array::loading(source, || serde_json::from_str::<QuantizedModel>(&text)).unwrap();
    assert!(source.unused().is_empty());
    let back = back.unwrap();
    back.text.validate().unwrap();
    assert_eq!(back, model);
}

/// SQNR of every node over `inputs`, float program against integer program.
fn node_sqnr(
    prog: &FloatProgram,
    ip: &IntProgram,
    inputs: &[Tensor],
    xq: ActQuant,
) -> Vec<(&'static str, f64)> {
    let mut sig: BTreeMap<&str, (Vec<f32>, Vec<f32>)> = BTreeMap::new();
    for t in inputs {
        let (f, i) = (record_float(prog, t), record_int(ip, t, xq));
        for name in NODES {
            let e = sig.entry(name).or_default();
            assert_eq!(f[name].shape(), i[name].shape(), "{name}");
            e.0.extend_from_slice(f[name].data());
            e.1.extend_from_slice(i[name].data());
        }
    }
    NODES
        .iter()
        .map(|&name| (name, sqnr_db(&sig[name].0, &sig[name].1)))
        .collect()
}

#[test]
fn internvl_ops_calibrate_lower_and_match_float() {
    let prog = program(7);
    let mut rng = Lcg::new(11);
    let calib: Vec<Tensor> = (0..24).map(|_| patches(&mut rng)).collect();
    let held_out: Vec<Tensor> = (0..4).map(|_| patches(&mut rng)).collect();
    let mut lines = Vec::new();
    // (scheme, least SQNR of every node on the calibration inputs, where only the integer
    // arithmetic and rounding to the calibrated grids err; and on held-out inputs, where values
    // beyond the calibrated ranges saturate too)
    for (scheme, calib_db, held_out_db) in [("w8a16", 75.0, 60.0), ("w8a8", 32.0, 30.0)] {
        let abits = if scheme.ends_with("a16") { 16 } else { 8 };
        let (stats, xq) = calibrate(&prog, &calib, abits);
        let (x, _) = io(&prog);
        let s = Scheme::parse(scheme).unwrap();
        let qg = lower(&prog, Part::Vision, &stats, &s, None, &[(x, xq)]).unwrap();
        qg.validate().unwrap();
        let kinds: Vec<&str> = qg.nodes.iter().map(|n| n.op.kind()).collect();
        assert_eq!(
            kinds,
            [
                "layer_norm",
                "cls_pos_embed",
                "channel_scale",
                "slice_rows",
                "pixel_shuffle",
                "layer_norm"
            ]
        );
        // Layer scale on tokens scales the last dimension; the row and token moves keep its
        // output's quantization.
        let QOp::ChannelScale(cs) = &qg.nodes[2].op else {
            panic!("{}", qg.nodes[2].op.kind())
        };
        assert_eq!(cs.axis, ChannelAxis::Last);
        for k in [3, 4] {
            assert_eq!(qg.values[qg.nodes[k].output.0 as usize].elem, Elem::Q(cs.y));
        }
        // The integer graph holds the float graph's weights (the first position row folded into
        // the class row still counts as one).
        let b = Bindings::default();
        let (fc, ic) = (GraphCost::float(&prog.graph, b), GraphCost::integer(&qg, b));
        assert_eq!(ic.params, fc.params);
        assert_eq!(ic.total.vector_ops, fc.total.vector_ops);
        artifact_round_trip(&qg);
        let ip = IntProgram::new(qg);
        for (set, inputs, least) in [
            ("calibration", &calib, calib_db),
            ("held-out", &held_out, held_out_db),
        ] {
            for (name, db) in node_sqnr(&prog, &ip, inputs, xq) {
                lines.push(format!("{scheme} {set} inputs, {name}: SQNR {db:.1} dB"));
                assert!(db > least, "{scheme} {set} {name}: {db:.1} dB");
            }
        }
    }
    for l in lines {
        println!("{l}");
    }
}

/// The integer slice and shuffle move exactly the integers the float ops move, and the integer
/// graph checks refuse shapes they cannot run on.
#[test]
fn row_slice_and_pixel_shuffle_move_integers_and_check_shapes() {
    use crate::graph::{Dim, Node, ValueInfo};
    let q = ActQuant::from_range(-1.0, 1.0, 8, false);
    let (h, w, c, s) = (6, 4, 3, 2);
    let data: Vec<i16> = (0..(h * w * c) as i16).map(|v| v - 30).collect();
    let info = |name: &str, shape: Vec<Dim>| ValueInfo {
        name: name.into(),
        shape,
        elem: Elem::Q(q),
    };
    let run = |op: QOp, out: Vec<Dim>| -> crate::error::Result<QTensor> {
        let g = Graph {
            inputs: vec![ValueId(0)],
            values: vec![info("x", fixed(&[h * w, c])), info("y", out)],
            nodes: vec![Node {
                name: "y".into(),
                op,
                inputs: vec![ValueId(0)],
                output: ValueId(1),
                observed: true,
                aliases: Vec::new(),
            }],
            params: Vec::new(),
            states: Vec::new(),
            ports: Vec::new(),
        };
        g.validate()?;
        let x = QTensor::new(&[h * w, c], data.clone(), q);
        let p = IntProgram::new(g);
        let out = p.run(
            vec![(ValueId(0), QVal::Q(x))],
            &[ValueId(1)],
            None,
            &mut crate::observe::NoObserver,
        )?;
        Ok(out.into_iter().next().unwrap())
    };
    let shuffle = QOp::PixelShuffle { h, w, scale: s };
    let y = run(shuffle.clone(), fixed(&[(h / s) * (w / s), s * s * c])).unwrap();
    assert_eq!(y.data, crate::ops::tokens::pixel_shuffle(&data, h, w, c, s));
    assert_eq!(y.q, q);
    let y = run(QOp::SliceRows { start: 5, len: 7 }, fixed(&[7, c])).unwrap();
    assert_eq!(y.data, &data[5 * c..12 * c]);
    // Wrong declared outputs, rows past the end, a grid that does not match or divide.
    assert!(run(shuffle, fixed(&[6, 2 * c])).is_err());
    assert!(run(QOp::SliceRows { start: 20, len: 5 }, fixed(&[5, c])).is_err());
    assert!(run(QOp::SliceRows { start: 0, len: 0 }, fixed(&[0, c])).is_err());
    assert!(run(
        QOp::SliceRows {
            start: usize::MAX,
            len: 2
        },
        fixed(&[2, c])
    )
    .is_err());
    let bad = QOp::PixelShuffle {
        h: 4,
        w: 6,
        scale: 4,
    };
    assert!(run(bad, fixed(&[1, 16 * c])).is_err());
    let bad = QOp::PixelShuffle {
        h: 4,
        w: 4,
        scale: 2,
    };
    assert!(run(bad, fixed(&[4, 4 * c])).is_err());
    let bad = QOp::PixelShuffle {
        h: 6,
        w: 4,
        scale: 0,
    };
    assert!(run(bad, fixed(&[1, c])).is_err());
}
