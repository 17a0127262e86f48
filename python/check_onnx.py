#!/usr/bin/env python3
"""Check an `autoneural export onnx` directory with the official `onnx` checker and ONNX Runtime,
against what the engine itself computes (`autoneural dump`, `autoneural run --json`).

  1. Every .onnx file: `onnx.checker.check_model` (path-based, full_check, so files with external
     data over 2 GB work), `onnx.shape_inference.infer_shapes_path`, opset / IR version, and its
     graph inputs and outputs against the parts listed in export.json.
  2. ONNX Runtime (CPU execution provider) on the inputs of each `autoneural dump --out D`
     directory: the vision encoder on each image of pixels.npy, the connector, embed_tokens on
     prompt_ids.json with the image rows spliced in where the id is `tokens.image`, and the language
     model from a fresh state (dynamic export: one call; static export: prefill in chunks of
     `prefill_chunk` rows, padded, with `position` / `valid`). The vision features, image
     embeddings and logits are compared with the dump: max |a-b|, max |a-b| / max |b|, SQNR in dB
     (10 log10(sum b^2 / sum (a-b)^2)) and, where export.json gives the edge quantization, the max
     and mean difference in output steps (|a-b| / scale).
  3. Greedy generation (with --expect-tokens, one `autoneural run --json` output per dump, in the
     same order): prefill, then decode steps (dynamic: seq=1 calls feeding present.* back as
     past.*; static: the decode file with position / valid), exactly as many tokens as expected,
     stopping early on an eos id of export.json. The generated ids must equal the expected ones.

Usage (from the repository root, in a venv with python/tests/requirements.txt):

  autoneural quantize --model models/autoneural-cockpit-tiny --calibration C --out Q
  autoneural export onnx --model Q --out OUT
  autoneural dump --model Q --image IMG --prompt "What speed is shown?" --out D
  autoneural run --model Q --image IMG --prompt "What speed is shown?" --json > run.json
  python3 python/check_onnx.py --export OUT --dump D --expect-tokens run.json --max-steps 18

An export with no engine to compare with (`autoneural export onnx --preset autoneural-1.5b`):
  python3 python/check_onnx.py --export OUT --smoke
runs every part on synthetic inputs (random pixels, the image's tokens between random text tokens,
prefill and four greedy decode steps) and checks that each loads and runs, that every output has
the shape export.json promises, and that none holds a NaN or infinity.

Finding where a disagreement starts (informational rows, no bar):
  --isolated     the connector and the language model also on the engine's own upstream tensors
  --sensitivity  how far ONNX Runtime's own outputs move when one pixel moves by one input step
                 (the floor two implementations that differ in one rounding end up apart by)
  --nodes        every node output of a `autoneural dump --nodes` directory, in graph order
  --opt-level disable / --disable-optimizer NAME   ONNX Runtime without (some of) its rewrites

Pass/fail: every compared tensor must reach --min-sqnr (default 40 dB); with --max-steps, tensors
whose edge quantization is known must stay within that many output steps; a float export's tensors
must be within --float-tolerance (default 1e-4) relative to max |b|; greedy ids must be identical;
every file must pass the checker. Exit status: 0 all checks pass, 1 a check failed, 2 the inputs are
unusable (missing files, an export.json or dump that does not match the export).

Importable: `check_export(...)` returns the whole report as a dict (what --json writes);
`check_files`, `Runner`, `run_case`, `compare_nodes` and `compare` are the pieces. Needs onnx,
onnxruntime and numpy (pinned in python/tests/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "autoneural-onnx-export"
FORMAT_VERSION = 1
OPSET = 21
IR_VERSION = 10

VISION, CONNECTOR, EMBED = "vision_encoder", "connector", "embed_tokens"
LM, LM_PREFILL, LM_DECODE = "language_model", "language_model_prefill", "language_model_decode"

# ONNX Runtime graph optimization levels by their short names.
OPT_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disable": "ORT_DISABLE_ALL",
}

# TensorProto element types <-> the dtype names export.json uses.
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 10: "float16", 11: "float64", 16: "bfloat16"}


class CheckError(Exception):
    """The inputs cannot be checked (missing file, export.json or dump not matching the export).
    The command line prints the message and exits with status 2; no traceback."""


# ---------------------------------------------------------------------------------------------
# export.json


def load_manifest(export_dir) -> dict:
    """Read and validate OUT/export.json; the files it names must exist."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise CheckError(f"{export_dir}: no such export directory")
    path = export_dir / "export.json"
    if not path.is_file():
        raise CheckError(f"{path}: missing (not an `autoneural export onnx` directory?)")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CheckError(f"{path}: `format` is {m.get('format') if isinstance(m, dict) else m!r}, "
                         f"expected {FORMAT!r}")
    if m.get("version") != FORMAT_VERSION:
        raise CheckError(f"{path}: version {m.get('version')!r}, this checker reads version "
                         f"{FORMAT_VERSION}")
    for key in ("precision", "parts", "states", "tokens"):
        if key not in m:
            raise CheckError(f"{path}: no `{key}`")
    if m["precision"] not in ("qdq", "float"):
        raise CheckError(f"{path}: precision {m['precision']!r}, expected \"qdq\" or \"float\"")
    names = [p.get("name") for p in m["parts"]]
    static = m.get("static")
    if static is not None:
        for key in ("prefill_chunk", "context"):
            if not isinstance(static.get(key), int) or static[key] < 1:
                raise CheckError(f"{path}: static.{key} is {static.get(key)!r}")
    want = [EMBED] + ([LM_PREFILL, LM_DECODE] if static else [LM])
    if m.get("image") is not None:
        want = [VISION, CONNECTOR] + want
        for key in ("size", "tokens"):
            if not isinstance(m["image"].get(key), int):
                raise CheckError(f"{path}: image.{key} is {m['image'].get(key)!r}")
    missing = [n for n in want if n not in names]
    if missing:
        kind = "static" if static else "dynamic"
        raise CheckError(f"{path}: a {kind} export needs parts {want}; missing {missing} "
                         f"(parts listed: {names})")
    for p in m["parts"]:
        f = export_dir / p.get("file", "")
        if not p.get("file") or not f.is_file():
            raise CheckError(f"{path}: part {p.get('name')!r} names file {p.get('file')!r}, "
                             f"which is missing from {export_dir}")
        for key in ("inputs", "outputs"):
            if not isinstance(p.get(key), list):
                raise CheckError(f"{path}: part {p['name']!r} has no `{key}` list")
    tokens = m["tokens"]
    if m.get("image") is not None and not isinstance(tokens.get("image"), int):
        raise CheckError(f"{path}: tokens.image is {tokens.get('image')!r}")
    eos = tokens.get("eos", [])
    if not isinstance(eos, list) or not all(isinstance(t, int) for t in eos):
        raise CheckError(f"{path}: tokens.eos is {eos!r}, expected a list of ids")
    for s in m["states"]:
        for key in ("name", "input", "output", "dtype", "shape"):
            if key not in s:
                raise CheckError(f"{path}: state {s.get('name')!r} has no `{key}`")
    return m


def lm_parts(manifest: dict) -> list[str]:
    return [LM_PREFILL, LM_DECODE] if manifest.get("static") else [LM]


def ports(manifest: dict, p: dict, key: str) -> list[dict]:
    """A part's inputs or outputs as export.json lists them, plus (for the language model parts)
    the state slots' past.* / present.* ports from `states` and, in a static export, the int64 [1]
    `position` and `valid` inputs, when the part does not list them."""
    listed = list(p[key])
    if p["name"] in lm_parts(manifest):
        names = {t["name"] for t in listed}
        if key == "inputs" and manifest.get("static"):
            for extra in ("position", "valid"):
                if extra not in names:
                    listed.append({"name": extra, "dtype": "int64", "shape": [1], "quant": None})
        for s in manifest["states"]:
            name = s["input" if key == "inputs" else "output"]
            if name not in names:
                shape = s["shape"]
                if key == "outputs" and s.get("grows"):
                    shape = [d if isinstance(d, int) else "past+seq" for d in shape]
                listed.append({"name": name, "dtype": s["dtype"], "shape": shape,
                               "quant": s.get("quant")})
    return listed


def part(manifest: dict, name: str) -> dict | None:
    for p in manifest["parts"]:
        if p["name"] == name:
            return p
    return None


def io_quant(manifest: dict, part_name: str, tensor: str, outputs=True) -> dict | None:
    """The edge quantization export.json gives for a part's input or output (None: float)."""
    p = part(manifest, part_name)
    if p is None:
        return None
    for t in p["outputs" if outputs else "inputs"]:
        if t["name"] == tensor:
            return t.get("quant")
    return None


# ---------------------------------------------------------------------------------------------
# 1. onnx.checker, shape inference, the files against export.json


def _dims(value_info) -> list:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _interface_problems(model, p: dict, manifest: dict) -> list[str]:
    """Where the file's graph inputs/outputs differ from what export.json says of the part."""
    problems = []
    opsets = {o.domain: o.version for o in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx"))
    want_opset = manifest.get("opset", OPSET)
    if opset != want_opset:
        problems.append(f"ai.onnx opset {opset}, export.json says {want_opset}")
    if model.ir_version != IR_VERSION:
        problems.append(f"IR version {model.ir_version}, the contract says {IR_VERSION}")
    inits = {i.name for i in model.graph.initializer}
    graph = {"inputs": [v for v in model.graph.input if v.name not in inits],
             "outputs": list(model.graph.output)}
    for key in ("inputs", "outputs"):
        have = {v.name: v for v in graph[key]}
        want = ports(manifest, p, key)
        extra = sorted(set(have) - {t["name"] for t in want})
        if extra:
            problems.append(f"{key} {extra} are not in export.json")
        for t in want:
            v = have.get(t["name"])
            if v is None:
                problems.append(f"no {key[:-1]} {t['name']!r} (export.json lists it)")
                continue
            dtype = ONNX_DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
            if dtype != t.get("dtype"):
                problems.append(f"{t['name']}: dtype {dtype}, export.json says {t.get('dtype')}")
            dims, shape = _dims(v), t.get("shape")
            if dims is None or shape is None:
                continue
            if len(dims) != len(shape) or any(
                    (isinstance(w, int) and d != w) or (isinstance(w, str) and isinstance(d, int))
                    for d, w in zip(dims, shape)):
                problems.append(f"{t['name']}: shape {dims}, export.json says {shape}")
    return problems


def check_files(export_dir, manifest: dict | None = None, full_check: bool = True) -> list[dict]:
    """onnx.checker (path-based, full_check), shape inference and the interface of every .onnx
    file in the export directory. One dict per file: file, part, checker, shape_inference,
    interface (each None when it passed, else the message), ok."""
    import onnx

    export_dir = Path(export_dir)
    manifest = manifest or load_manifest(export_dir)
    by_file = {p["file"]: p for p in manifest["parts"]}
    files = sorted(export_dir.glob("*.onnx"))
    results = []
    for f in files:
        r = {"file": f.name, "part": by_file.get(f.name, {}).get("name"), "checker": None,
             "shape_inference": None, "interface": None}
        try:
            onnx.checker.check_model(str(f), full_check=full_check)
        except Exception as e:  # onnx.checker.ValidationError, InferenceError, ...
            r["checker"] = _one_line(e)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                onnx.shape_inference.infer_shapes_path(str(f), str(Path(tmp) / f.name),
                                                       check_type=True, strict_mode=True)
            except Exception as e:
                r["shape_inference"] = _one_line(e)
        if r["part"] is None:
            r["interface"] = "not a part of export.json"
        else:
            try:
                model = onnx.load(str(f), load_external_data=False)
                problems = _interface_problems(model, by_file[f.name], manifest)
                r["interface"] = "; ".join(problems) or None
            except Exception as e:
                r["interface"] = _one_line(e)
        r["ok"] = r["checker"] is None and r["shape_inference"] is None and r["interface"] is None
        results.append(r)
    listed = {p["file"] for p in manifest["parts"]}
    for name in sorted(listed - {f.name for f in files}):
        results.append({"file": name, "part": by_file[name]["name"], "checker": "missing",
                        "shape_inference": None, "interface": None, "ok": False})
    return results


def _one_line(e: Exception, limit: int = 400) -> str:
    s = " ".join(str(e).split()) or type(e).__name__
    return s if len(s) <= limit else s[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# 2. ONNX Runtime


class PartFailed(Exception):
    """ONNX Runtime could not load or run a part: a check failure, reported, not a traceback."""


class Runner:
    """ONNX Runtime sessions (CPU execution provider) over an export directory, made on use."""

    def __init__(self, export_dir, manifest: dict | None = None, opt_level: str = "all",
                 threads: int | None = None, disabled_optimizers=()):
        import onnxruntime as ort

        self.ort = ort
        self.dir = Path(export_dir)
        self.manifest = manifest or load_manifest(self.dir)
        if opt_level not in OPT_LEVELS:
            raise CheckError(f"unknown optimization level {opt_level!r} "
                             f"(one of {', '.join(OPT_LEVELS)})")
        self.opt_level = opt_level
        self.threads = threads
        self.disabled_optimizers = list(disabled_optimizers or [])
        self.sessions = {}
        self.static = self.manifest.get("static")
        self.states = self.manifest["states"]
        self.seconds = {}

    def session(self, name: str):
        if name not in self.sessions:
            p = part(self.manifest, name)
            if p is None:
                raise CheckError(f"export.json lists no part {name!r}")
            opts = self.ort.SessionOptions()
            opts.graph_optimization_level = getattr(self.ort.GraphOptimizationLevel,
                                                    OPT_LEVELS[self.opt_level])
            opts.log_severity_level = 3
            if self.threads:
                opts.intra_op_num_threads = self.threads
            try:
                self.sessions[name] = self.ort.InferenceSession(
                    str(self.dir / p["file"]), sess_options=opts,
                    providers=["CPUExecutionProvider"],
                    disabled_optimizers=self.disabled_optimizers or None)
            except Exception as e:
                raise PartFailed(f"{name}: ONNX Runtime cannot load {p['file']}: "
                                 f"{_one_line(e)}") from None
        return self.sessions[name]

    def run(self, name: str, feeds: dict) -> dict:
        s = self.session(name)
        need = {i.name for i in s.get_inputs()}
        if need != set(feeds):
            raise CheckError(f"{name}: the file's inputs {sorted(need)} are not what the contract "
                             f"feeds {sorted(feeds)}")
        t = time.perf_counter()
        try:
            out = s.run(None, feeds)
        except Exception as e:
            shapes = {k: list(v.shape) for k, v in feeds.items() if v.ndim and k.find("past") < 0}
            raise PartFailed(f"{name}: ONNX Runtime run failed (inputs {shapes}): "
                             f"{_one_line(e)}") from None
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
        return {o.name: v for o, v in zip(s.get_outputs(), out)}

    # -- the parts

    def vision(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [1, 3, S, S] -> features [N, C]."""
        return self.run(VISION, {"pixels": np.ascontiguousarray(pixels, np.float32)})["features"]

    def connector(self, features: np.ndarray) -> np.ndarray:
        return self.run(CONNECTOR, {"features": np.ascontiguousarray(features, np.float32)})[
            "image_embeds"]

    def embed(self, ids) -> np.ndarray:
        return self.run(EMBED, {"input_ids": np.asarray(ids, np.int64)})["inputs_embeds"]

    def prompt_embeddings(self, ids, image_embeds: np.ndarray | None) -> np.ndarray:
        """embed_tokens(ids) with the rows whose id is tokens.image replaced, in order, by the
        image embedding rows."""
        e = np.array(self.embed(ids), copy=True)
        if image_embeds is None or len(image_embeds) == 0:
            return e
        where = np.flatnonzero(np.asarray(ids) == self.manifest["tokens"]["image"])
        if len(where) != len(image_embeds):
            raise CheckError(f"the prompt has {len(where)} image tokens (id "
                             f"{self.manifest['tokens']['image']}) but there are "
                             f"{len(image_embeds)} image embedding rows")
        e[where] = image_embeds
        return e

    def fresh_state(self) -> dict:
        """past.* inputs of a fresh sequence: windows (and static K/V) filled with the slot's
        zero point; dynamic K/V with no rows."""
        state = {}
        for s in self.states:
            shape = [0 if isinstance(d, str) else d for d in s["shape"]]
            if self.static is None and s.get("grows") is False and any(
                    isinstance(d, str) for d in s["shape"]):
                raise CheckError(f"state {s['name']}: symbolic shape {s['shape']} but grows=false")
            try:
                dtype = np.dtype(s["dtype"])
            except TypeError:
                raise CheckError(f"state {s['name']}: unknown dtype {s['dtype']!r}") from None
            zp = s.get("fill", (s.get("quant") or {}).get("zero_point", 0)) if dtype.kind in "iu" else 0
            state[s["input"]] = np.full(shape, zp, dtype)
        return state

    def _lm_call(self, name: str, embeds: np.ndarray, state: dict, extra: dict):
        feeds = {"inputs_embeds": np.ascontiguousarray(embeds, np.float32), **extra, **state}
        out = self.run(name, feeds)
        new = {}
        for s in self.states:
            if s["output"] not in out:
                raise CheckError(f"{name}: no output {s['output']!r}")
            new[s["input"]] = out[s["output"]]
        return out["logits"], new

    def lm(self, embeds: np.ndarray, state: dict, position: int) -> tuple[np.ndarray, dict]:
        """Run the language model on `embeds` [seq, H] after `position` tokens held by `state`.
        Dynamic: one call. Static: prefill chunks (decode file for a single row). Returns the
        logits of the real rows and the next state."""
        seq = len(embeds)
        if self.static is None:
            ctx = self.manifest.get("context")
            if isinstance(ctx, int) and position + seq > ctx:
                raise CheckError(f"{position + seq} tokens exceed the export's context {ctx}")
            return self._lm_call(LM, embeds, state, {})
        chunk, ctx = self.static["prefill_chunk"], self.static["context"]
        if position + seq > ctx:
            raise CheckError(f"{position + seq} tokens exceed the static context {ctx}")
        rows = []
        start = 0
        while start < seq:
            name, width = (LM_DECODE, 1) if seq - start == 1 and seq == 1 else (LM_PREFILL, chunk)
            valid = min(width, seq - start)
            x = np.zeros((width, embeds.shape[1]), np.float32)
            x[:valid] = embeds[start:start + valid]
            logits, state = self._lm_call(name, x, state, {
                "position": np.array([position + start], np.int64),
                "valid": np.array([valid], np.int64)})
            rows.append(logits[:valid])
            start += valid
        return np.concatenate(rows), state


# ---------------------------------------------------------------------------------------------
# comparisons


def compare(a: np.ndarray, b: np.ndarray, quant: dict | None = None) -> dict:
    """ONNX Runtime's `a` against the engine's `b`: max |a-b|, max |a-b| / max |b|, SQNR in dB
    and, with the edge quantization, max and mean |a-b| / scale."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return {"shape": list(a.shape), "expected_shape": list(b.shape),
                "error": f"shape {list(a.shape)} vs {list(b.shape)} in the dump"}
    d = np.abs(a - b)
    signal, noise = float(np.sum(b * b)), float(np.sum(d * d))
    max_b = float(np.max(np.abs(b))) if b.size else 0.0
    r = {
        "shape": list(a.shape),
        "max_abs": float(d.max()) if d.size else 0.0,
        "max_ref": max_b,
        "rel": (float(d.max()) / max_b if max_b > 0 else (0.0 if not d.size or d.max() == 0
                                                           else math.inf)) if d.size else 0.0,
        "sqnr_db": (math.inf if noise == 0 else
                    (10 * math.log10(signal / noise) if signal > 0 else -math.inf)),
        "nonfinite": int(np.count_nonzero(~np.isfinite(a))),
    }
    if quant and quant.get("scale"):
        steps = d / float(quant["scale"])
        r["max_steps"] = float(steps.max()) if steps.size else 0.0
        r["mean_steps"] = float(steps.mean()) if steps.size else 0.0
        r["scale"] = float(quant["scale"])
        r["off_steps"] = int(np.count_nonzero(steps > 0.5))
    return r


# ---------------------------------------------------------------------------------------------
# dumps and expected tokens


def load_dump(dump_dir) -> dict:
    """pixels.npy, vision_features.npy, image_embeddings.npy, logits.npy, prompt_ids.json of an
    `autoneural dump --out D` directory (the image files only when the prompt has images)."""
    d = Path(dump_dir)
    if not d.is_dir():
        raise CheckError(f"{d}: no such dump directory")
    f = d / "prompt_ids.json"
    if not f.is_file():
        raise CheckError(f"{f}: missing (not an `autoneural dump --out` directory?)")
    try:
        ids = json.loads(f.read_text())
    except ValueError as e:
        raise CheckError(f"{f}: not valid JSON: {e}") from None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        raise CheckError(f"{f}: expected a non-empty list of token ids")
    out = {"dir": str(d), "prompt_ids": ids}
    names = {"pixels": "pixels.npy", "vision_features": "vision_features.npy",
             "image_embeddings": "image_embeddings.npy", "logits": "logits.npy"}
    for key, name in names.items():
        p = d / name
        if p.is_file():
            try:
                out[key] = np.load(p)
            except (OSError, ValueError) as e:
                raise CheckError(f"{p}: not a readable .npy: {e}") from None
        elif key == "logits":
            raise CheckError(f"{p}: missing")
        else:
            out[key] = None
    if out["pixels"] is not None and out["pixels"].ndim == 3:
        out["pixels"] = out["pixels"][None]  # one image is written as [3, S, S]
    if out["logits"].ndim != 2 or out["logits"].shape[0] != len(ids):
        raise CheckError(f"{d / 'logits.npy'}: shape {list(out['logits'].shape)}, expected "
                         f"[{len(ids)}, V] for {len(ids)} prompt ids")
    return out


def validate_dump(dump: dict, manifest: dict) -> None:
    """The dump must fit the export: image size, image token count, vocabulary."""
    d = dump["dir"]
    ids = np.asarray(dump["prompt_ids"])
    img = manifest.get("image")
    px = dump["pixels"]
    n = 0 if px is None else px.shape[0]
    if n:
        if img is None:
            raise CheckError(f"{d}: the dump has {n} image(s) but the export has no vision part")
        s = img["size"]
        if px.ndim != 4 or list(px.shape[1:]) != [3, s, s]:
            raise CheckError(f"{d}/pixels.npy: shape {list(px.shape)}, the export's vision "
                             f"encoder takes [n, 3, {s}, {s}] (dumped with another model?)")
        for key in ("vision_features", "image_embeddings"):
            if dump[key] is None:
                raise CheckError(f"{d}: pixels.npy but no {key}.npy")
            if dump[key].ndim != 2 or dump[key].shape[0] != n * img["tokens"]:
                raise CheckError(f"{d}/{key}.npy: shape {list(dump[key].shape)}, expected "
                                 f"{n * img['tokens']} rows ({n} image(s) x {img['tokens']} "
                                 f"tokens)")
        k = int(np.count_nonzero(ids == manifest["tokens"]["image"]))
        if k != n * img["tokens"]:
            raise CheckError(f"{d}: {k} prompt ids equal tokens.image "
                             f"({manifest['tokens']['image']}), expected {n * img['tokens']} "
                             f"for {n} image(s): dumped with another model or tokenizer?")
    p = part(manifest, LM) or part(manifest, LM_PREFILL)
    for t in p["outputs"]:
        if t["name"] == "logits" and isinstance(t["shape"][-1], int):
            v = t["shape"][-1]
            if dump["logits"].shape[1] != v:
                raise CheckError(f"{d}/logits.npy: {dump['logits'].shape[1]} columns, the "
                                 f"export's vocabulary is {v}")
            if ids.max() >= v or ids.min() < 0:
                raise CheckError(f"{d}/prompt_ids.json: ids outside the vocabulary of {v}")


def load_expected(path) -> dict:
    """`autoneural run --json` output: {"tokens": [...], ...}."""
    p = Path(path)
    if not p.is_file():
        raise CheckError(f"{p}: missing")
    try:
        v = json.loads(p.read_text())
    except ValueError as e:
        raise CheckError(f"{p}: not valid JSON (expected `autoneural run --json` output): {e}") \
            from None
    toks = v.get("tokens") if isinstance(v, dict) else v
    if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
        raise CheckError(f"{p}: no `tokens` list of ids (expected `autoneural run --json` output)")
    if not toks:
        raise CheckError(f"{p}: `tokens` is empty")
    return {"path": str(p), "tokens": toks,
            "prompt_tokens": v.get("prompt_tokens") if isinstance(v, dict) else None,
            "images": v.get("images") if isinstance(v, dict) else None,
            "text": v.get("text") if isinstance(v, dict) else None}


# ---------------------------------------------------------------------------------------------
# one dump through ONNX Runtime


def run_case(runner: Runner, dump: dict, expected: dict | None = None,
             isolated: bool = False, sensitivity: bool = False) -> dict:
    """Run the export on one dump's inputs; compare with the dump and, given expected tokens,
    generate greedily. Returns {"dump", "prompt_tokens", "images", "tensors": {name: compare},
    "greedy": {...} | None, "errors": [str]}.

    A part ONNX Runtime cannot load or run is an error of the run; the parts after it then take
    the engine's own upstream tensors from the dump (rows named "... (engine's ...)"), so one
    broken part does not hide how the others do."""
    m = runner.manifest
    validate_dump(dump, m)
    ids = dump["prompt_ids"]
    px = dump["pixels"]
    n = 0 if px is None else px.shape[0]
    res = {"dump": dump["dir"], "prompt_tokens": len(ids), "images": n, "tensors": {},
           "greedy": None, "errors": []}
    if expected is not None:
        pt, im = expected.get("prompt_tokens"), expected.get("images")
        if (pt is not None and pt != len(ids)) or (im is not None and im != n):
            raise CheckError(f"{expected['path']}: run with {pt} prompt tokens and {im} image(s); "
                             f"{dump['dir']} has {len(ids)} and {n}: not the same request")
    tok = m["image"]["tokens"] if n else 0
    per_image = lambda f, x: np.concatenate([f(x[i * tok:(i + 1) * tok]) for i in range(n)])
    q_embeds = io_quant(m, CONNECTOR, "image_embeds")
    feats = image_embeds = None
    if n:
        try:
            feats = np.concatenate([runner.vision(px[i:i + 1]) for i in range(n)])
            res["tensors"]["features"] = compare(feats, dump["vision_features"],
                                                 io_quant(m, VISION, "features"))
        except PartFailed as e:
            res["errors"].append(str(e))
        if feats is not None:
            try:
                image_embeds = per_image(runner.connector, feats)
                res["tensors"]["image_embeds"] = compare(image_embeds, dump["image_embeddings"],
                                                         q_embeds)
            except PartFailed as e:
                res["errors"].append(str(e))
        if isolated or feats is None:
            # The connector on the engine's own features: where a disagreement starts.
            try:
                ie = per_image(runner.connector, dump["vision_features"])
                res["tensors"]["image_embeds (engine's features)"] = compare(
                    ie, dump["image_embeddings"], q_embeds)
            except PartFailed as e:
                if str(e) not in res["errors"]:
                    res["errors"].append(str(e))
    q_logits = io_quant(m, LM_PREFILL if runner.static else LM, "logits")
    variants = []
    if not n or image_embeds is not None:
        variants.append(("logits", image_embeds, True))
    if n and (isolated or image_embeds is None):
        variants.append(("logits (engine's image embeddings)", dump["image_embeddings"],
                         image_embeds is None))
    logits = None
    for name, ie, generate in variants:
        try:
            out, state = runner.lm(runner.prompt_embeddings(ids, ie), runner.fresh_state(), 0)
            res["tensors"][name] = compare(out, dump["logits"], q_logits)
            if name == "logits":
                logits = out
            if generate and expected is not None:
                res["greedy"] = greedy(runner, out, state, len(ids), expected["tokens"])
                if ie is not None and ie is dump["image_embeddings"]:
                    res["greedy"]["on"] = "engine's image embeddings"
        except PartFailed as e:
            if str(e) not in res["errors"]:
                res["errors"].append(str(e))
            break
    if sensitivity and n and logits is not None:
        res["sensitivity"] = input_sensitivity(runner, dump, feats, logits)
    return res


def input_sensitivity(runner: Runner, dump: dict, feats: np.ndarray, logits: np.ndarray) -> dict:
    """How far ONNX Runtime's own features and logits move when one pixel (the middle element of
    the first image) moves by one step of the input quantization: the floor any two
    implementations that differ in a single rounding end up apart by. Informational (no bar)."""
    m = runner.manifest
    q_in = io_quant(m, VISION, "pixels", outputs=False)
    step = q_in["scale"] if q_in and q_in.get("scale") else 2.0 ** -16
    px = np.array(dump["pixels"], np.float32, copy=True)
    flat = px[0].reshape(-1)
    i = flat.size // 2
    flat[i] += step if flat[i] + step <= px.max() else -step
    px[0] = flat.reshape(px[0].shape)
    n, tok = px.shape[0], m["image"]["tokens"]
    f2 = np.concatenate([runner.vision(px[k:k + 1]) for k in range(n)])
    ie2 = np.concatenate([runner.connector(f2[k * tok:(k + 1) * tok]) for k in range(n)])
    lg2, _ = runner.lm(runner.prompt_embeddings(dump["prompt_ids"], ie2), runner.fresh_state(), 0)
    return {"pixel_step": float(step),
            "features": compare(f2, feats, io_quant(m, VISION, "features")),
            "logits": compare(lg2, logits,
                              io_quant(m, LM_PREFILL if runner.static else LM, "logits"))}


def greedy(runner: Runner, prefill_logits: np.ndarray, state: dict, position: int,
           expected: list[int]) -> dict:
    """Greedy decoding after the prefill: exactly len(expected) tokens, stopping early after an
    eos id of export.json (the stop token is part of the output, as `autoneural run` prints it)."""
    eos = set(runner.manifest["tokens"].get("eos", []))
    tok = int(np.argmax(prefill_logits[-1]))  # first index on ties, as the engine's argmax
    out = [tok]
    while len(out) < len(expected) and tok not in eos:
        logits, state = runner.lm(runner.embed([tok]), state, position)
        position += 1
        tok = int(np.argmax(logits[-1]))
        out.append(tok)
    first = next((i for i, (a, b) in enumerate(zip(out, expected)) if a != b),
                 None if len(out) == len(expected) else min(len(out), len(expected)))
    return {"generated": out, "expected": list(expected), "equal": out == list(expected),
            "first_difference": first}


def smoke_run(runner: Runner, text_tokens: int = 8, decode_steps: int = 4, seed: int = 0) -> dict:
    """Every part in ONNX Runtime on synthetic inputs, for exports with no dump to compare with
    (the random-weight presets): uniform random pixels, a prompt of the image's tokens between
    random text tokens, a prefill and `decode_steps` greedy decode steps through the state.
    Checks what holds whatever the weights: each part loads and runs, every output has the shape
    export.json promises and no NaN or infinity. Returns {"shapes": {tensor: shape},
    "nonfinite": {tensor: count}, "generated": [ids], "errors": [str]}."""
    m = runner.manifest
    rng = np.random.default_rng(seed)
    res = {"shapes": {}, "nonfinite": {}, "generated": [], "errors": []}

    def note(name, x):
        res["shapes"][name] = list(x.shape)
        res["nonfinite"][name] = int(np.count_nonzero(~np.isfinite(x)))

    tok_image = m["tokens"]["image"]
    lm = part(m, LM_PREFILL if runner.static else LM)
    width = next(i["shape"][-1] for i in lm["inputs"] if i["name"] == "inputs_embeds")
    vocab = next(o["shape"][-1] for o in lm["outputs"] if o["name"] == "logits")
    try:
        image_embeds = None
        if m.get("image"):
            s = m["image"]["size"]
            feats = runner.vision(rng.random((1, 3, s, s), dtype=np.float32))
            note("features", feats)
            image_embeds = runner.connector(feats)
            note("image_embeds", image_embeds)
            want = [m["image"]["tokens"], width]
            if list(image_embeds.shape) != want:
                # The prompt cannot be assembled: stop here, as with a part that cannot run.
                raise PartFailed(f"image_embeds {list(image_embeds.shape)}, expected {want} "
                                 "(tokens per image, the language model's input width)")
        text = [int(t) if t != tok_image else (int(t) + 1) % vocab
                for t in rng.integers(0, vocab, text_tokens)]
        half = text_tokens // 2
        n_img = 0 if image_embeds is None else len(image_embeds)
        ids = text[:half] + [tok_image] * n_img + text[half:]
        embeds = runner.prompt_embeddings(ids, image_embeds)
        note("inputs_embeds", embeds)
        logits, state = runner.lm(embeds, runner.fresh_state(), 0)
        note("logits (prefill)", logits)
        if list(logits.shape) != [len(ids), vocab]:
            res["errors"].append(f"prefill logits {list(logits.shape)}, expected "
                                 f"{[len(ids), vocab]}")
        position, tok = len(ids), int(np.argmax(logits[-1]))
        res["generated"].append(tok)
        for _ in range(decode_steps):
            logits, state = runner.lm(runner.embed([tok]), state, position)
            note("logits (decode)", logits)
            position += 1
            tok = int(np.argmax(logits[-1]))
            res["generated"].append(tok)
        for s_ in runner.states:
            note(s_["output"], state[s_["input"]])
    except PartFailed as e:
        res["errors"].append(str(e))
    res["errors"] += [f"{k}: {v} non-finite values" for k, v in res["nonfinite"].items() if v]
    return res


# ---------------------------------------------------------------------------------------------
# node by node (`autoneural dump --nodes`)


def _scalar_quant(model, dq_name: str) -> dict | None:
    """scale / zero point of the DequantizeLinear producing `dq_name`, when they are scalars."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] == dq_name:
            if len(n.input) > 1 and n.input[1] in inits:
                scale = numpy_helper.to_array(inits[n.input[1]])
                if scale.size == 1:
                    return {"scale": float(scale.ravel()[0])}
    return None


def compare_nodes(runner: Runner, dump: dict) -> list[dict]:
    """Every node output `autoneural dump --nodes` wrote (nodes/<name>.npy, dequantized on the
    integer path) against the same value in the export (`<name>_dq` in a QDQ file, `<name>` in a
    float one), in graph order, each part run on the engine's own upstream tensors (the last
    image's pixels; its vision features; the prompt with the engine's image embeddings), so each
    row shows where the export departs from the engine rather than what it inherited. The language
    model is compared on a dynamic export only (a static one runs the prompt in chunks)."""
    import onnx

    d = Path(dump["dir"]) / "nodes"
    if not d.is_dir():
        raise CheckError(f"{d}: missing (write the dump with `autoneural dump --nodes`)")
    wanted = {f.name[:-4]: f for f in d.glob("*.npy")}
    m = runner.manifest
    ids = dump["prompt_ids"]
    n = 0 if dump["pixels"] is None else dump["pixels"].shape[0]
    tok = m["image"]["tokens"] if n else 0
    feeds_by_part = {}
    if n:
        feeds_by_part[VISION] = {"pixels": np.ascontiguousarray(dump["pixels"][n - 1:n],
                                                                np.float32)}
        feeds_by_part[CONNECTOR] = {"features": np.ascontiguousarray(
            dump["vision_features"][(n - 1) * tok:n * tok], np.float32)}
    feeds_by_part[EMBED] = {"input_ids": np.asarray(ids, np.int64)}
    if not runner.static:
        try:
            e = runner.prompt_embeddings(ids, dump["image_embeddings"] if n else None)
        except PartFailed:
            e = None
        if e is not None:
            feeds_by_part[LM] = {"inputs_embeds": e, **runner.fresh_state()}
    rows = []
    for name, feeds in feeds_by_part.items():
        p = part(m, name)
        path = runner.dir / p["file"]
        model = onnx.load(str(path), load_external_data=False)
        produced = [o for node in model.graph.node for o in node.output]
        have = set(produced)
        picks = []  # (node name, onnx value) in graph order
        for v in produced:
            base = v[:-3] if v.endswith("_dq") else v
            if base in wanted and (v == base + "_dq" or base + "_dq" not in have) and \
                    base not in [b for b, _ in picks]:
                picks.append((base, v))
        if not picks:
            continue
        # The part with the values as extra outputs; external data (models over 2 GB) stays on
        # disk, found in the export directory.
        model = onnx.load(str(path), load_external_data=False)
        outs = {o.name for o in model.graph.output}
        for _, v in picks:
            if v not in outs:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(v))
        opts = runner.ort.SessionOptions()
        opts.graph_optimization_level = getattr(runner.ort.GraphOptimizationLevel,
                                                OPT_LEVELS[runner.opt_level])
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                      str(runner.dir.resolve()))
        try:
            sess = runner.ort.InferenceSession(model.SerializeToString(), opts,
                                               providers=["CPUExecutionProvider"],
                                               disabled_optimizers=runner.disabled_optimizers
                                               or None)
            got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        except Exception as e:
            rows.append({"part": name, "node": None, "error": _one_line(e)})
            continue
        for base, v in picks:
            a, b = got[v], np.load(wanted[base])
            if a.shape != b.shape and a.size == b.size:
                a = a.reshape(b.shape)
            if name == EMBED and n and a.shape == b.shape:
                # The engine's node holds the prompt with the image rows spliced in (the export
                # splices them outside, then quantizes them at the language model's input).
                text = np.asarray(ids) != m["tokens"]["image"]
                a, b = a[text], b[text]
                base_label = base + " (text rows)"
            else:
                base_label = base
            q = _scalar_quant(model, v) if v.endswith("_dq") else None
            rows.append({"part": name, "node": base_label, "value": v, **compare(a, b, q)})
    return rows


def format_nodes(rows: list[dict], limit: int = 12) -> str:
    """The first nodes where the export departs from the engine, and the worst ones."""
    ok = [r for r in rows if r.get("node") and "error" not in r]
    bad = [r for r in ok if r.get("off_steps", 0) > 0 or
           ("max_steps" not in r and r["rel"] > 1e-5)]
    lines = [f"  nodes: {len(ok)} compared, {len(bad)} depart from the engine"
             + (" (more than half a step somewhere)" if any("max_steps" in r for r in ok)
                else " (max|a-b|/max|b| > 1e-5)")]
    for r in rows:
        if "error" in r:
            lines.append(f"    {r['part']}: {r['error']}")

    def row(r):
        return (f"    {r['part'][:14]:14} {r['node'][:44]:44} {_fmt(r['sqnr_db'], '8.2f')} dB "
                f"{_fmt(r.get('max_steps'), '7.2f')} steps max {_fmt(r.get('mean_steps'), '7.4f')} "
                f"mean {r.get('off_steps', '-')} elements off" if "max_steps" in r else
                f"    {r['part'][:14]:14} {r['node'][:44]:44} {_fmt(r['sqnr_db'], '8.2f')} dB "
                f"rel {_fmt(r['rel'], '.3g')}")
    if bad:
        lines.append("    first departures (graph order):")
        lines += [row(r) for r in bad[:limit]]
        worst_rows = sorted(bad, key=lambda r: r["sqnr_db"])[:limit]
        lines.append("    lowest SQNR:")
        lines += [row(r) for r in worst_rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the whole check


@dataclass
class Thresholds:
    float_tolerance: float = 1e-4
    min_sqnr: float = 40.0
    max_steps: float | None = None
    check_greedy: bool = True


def judge(report: dict, th: Thresholds) -> list[str]:
    """The failed checks of a report, one message each."""
    fails = []
    for f in report["files"]:
        for key in ("checker", "shape_inference", "interface"):
            if f.get(key):
                fails.append(f"{f['file']}: {key.replace('_', ' ')}: {f[key]}")
    is_float = report["precision"] == "float"
    for r in report.get("smoke", []):
        fails += [f"synthetic run [{r['opt_level']}]: {e}" for e in r["errors"]]
    for run in report["runs"]:
        tag = f"{Path(run['dump']).name} [{run['opt_level']}]"
        for e in run.get("errors", []):
            fails.append(f"{tag}: {e}")
        for name, c in run["tensors"].items():
            if "error" in c:
                fails.append(f"{tag}: {name}: {c['error']}")
                continue
            if c["nonfinite"]:
                fails.append(f"{tag}: {name}: {c['nonfinite']} non-finite values")
            if c["sqnr_db"] < th.min_sqnr:
                fails.append(f"{tag}: {name}: SQNR {c['sqnr_db']:.2f} dB < {th.min_sqnr} dB")
            if is_float and not c["rel"] <= th.float_tolerance:
                fails.append(f"{tag}: {name}: max|a-b|/max|b| {c['rel']:.3g} > "
                             f"{th.float_tolerance:g}")
            if th.max_steps is not None and "max_steps" in c and not c["max_steps"] <= th.max_steps:
                fails.append(f"{tag}: {name}: {c['max_steps']:.2f} output steps > "
                             f"{th.max_steps:g}")
        g = run.get("greedy")
        if th.check_greedy and g is not None and not g["equal"]:
            i = g["first_difference"]
            fails.append(f"{tag}: greedy ids differ at {i}: got {g['generated']}, expected "
                         f"{g['expected']}")
    return fails


def check_export(export_dir, dumps=(), expects=(), thresholds: Thresholds | None = None,
                 opt_levels=("all",), isolated: bool = False, full_check: bool = True,
                 sensitivity: bool = False, nodes: bool = False,
                 threads: int | None = None, skip_files: bool = False,
                 disabled_optimizers=(), smoke: bool = False) -> dict:
    """Everything for one export directory; the report dict (also what --json writes). Raises
    CheckError when the inputs are unusable; check failures are listed in report["failures"]."""
    th = thresholds or Thresholds()
    export_dir = Path(export_dir)
    t0 = time.perf_counter()
    manifest = load_manifest(export_dir)
    expects = list(expects or [])
    dumps = list(dumps or [])
    if expects and len(expects) != len(dumps):
        raise CheckError(f"{len(expects)} --expect-tokens for {len(dumps)} --dump: give one "
                         "`autoneural run --json` output per dump, in the same order")
    loaded = [load_dump(d) for d in dumps]
    if nodes:
        for d in loaded:
            if not (Path(d["dir"]) / "nodes").is_dir():
                raise CheckError(f"{d['dir']}: no nodes/ (write it with `autoneural dump --nodes`)")
    for d in loaded:
        validate_dump(d, manifest)
    exp = [load_expected(e) for e in expects] or [None] * len(loaded)
    report = {"export": str(export_dir), "precision": manifest["precision"],
              "scheme": manifest.get("scheme"), "static": manifest.get("static"),
              "files": [] if skip_files else check_files(export_dir, manifest, full_check),
              "runs": [], "seconds": {}, "disabled_optimizers": list(disabled_optimizers or [])}
    for level in opt_levels:
        runner = Runner(export_dir, manifest, level, threads, disabled_optimizers)
        for d, e in zip(loaded, exp):
            r = run_case(runner, d, e, isolated, sensitivity)
            r["opt_level"] = level
            if nodes:
                r["nodes"] = compare_nodes(runner, d)
            report["runs"].append(r)
        if smoke:
            t = time.perf_counter()
            r = smoke_run(runner)
            r["opt_level"] = level
            r["seconds"] = time.perf_counter() - t
            report.setdefault("smoke", []).append(r)
        report["seconds"][level] = runner.seconds
    report["thresholds"] = {"float_tolerance": th.float_tolerance, "min_sqnr": th.min_sqnr,
                            "max_steps": th.max_steps}
    report["failures"] = judge(report, th)
    report["ok"] = not report["failures"]
    report["seconds"]["total"] = time.perf_counter() - t0
    return report


def worst(report: dict, tensor: str, key: str, opt_level: str | None = None):
    """The worst value of `key` for `tensor` over the report's runs (max, or min for sqnr_db)."""
    vals = [r["tensors"][tensor][key] for r in report["runs"]
            if tensor in r["tensors"] and key in r["tensors"][tensor]
            and (opt_level is None or r["opt_level"] == opt_level)]
    if not vals:
        return None
    return min(vals) if key == "sqnr_db" else max(vals)


# ---------------------------------------------------------------------------------------------
# printing


def _fmt(v, spec):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def format_report(report: dict) -> str:
    lines = [f"export {report['export']}: {report['precision']}, "
             f"{report.get('scheme') or 'float'}, "
             + (f"static (prefill chunk {report['static']['prefill_chunk']}, context "
                f"{report['static']['context']})" if report.get("static") else "dynamic")]
    if report.get("disabled_optimizers"):
        lines.append(f"  ONNX Runtime without {', '.join(report['disabled_optimizers'])}")
    if report["files"]:
        lines.append(f"  {'file':34} {'checker':8} {'shapes':8} {'interface':9}")
        for f in report["files"]:
            st = ["ok" if f.get(k) is None else "FAIL"
                  for k in ("checker", "shape_inference", "interface")]
            lines.append(f"  {f['file']:34} {st[0]:8} {st[1]:8} {st[2]:9}")
    for run in report["runs"]:
        lines.append(f"  {run['dump']} [{OPT_LEVELS[run['opt_level']]}]: {run['prompt_tokens']} "
                     f"prompt tokens, {run['images']} image(s)")
        if run["tensors"]:
            lines.append(f"    {'tensor':40} {'shape':12} {'max|a-b|':>10} {'rel':>10} "
                         f"{'SQNR dB':>8} {'max steps':>9} {'mean steps':>10}")
        for name, c in run["tensors"].items():
            if "error" in c:
                lines.append(f"    {name:40} {c['error']}")
                continue
            shape = "x".join(map(str, c["shape"]))
            lines.append(f"    {name:40} {shape:12} {_fmt(c['max_abs'], '10.3g')} "
                         f"{_fmt(c['rel'], '10.3g')} {_fmt(c['sqnr_db'], '8.2f')} "
                         f"{_fmt(c.get('max_steps'), '9.2f')} {_fmt(c.get('mean_steps'), '10.4f')}")
        for name, c in (run.get("sensitivity") or {}).items():
            if name == "pixel_step" or "error" in c:
                continue
            shape = "x".join(map(str, c["shape"]))
            label = f"{name} (reference: one pixel +1 step)"
            lines.append(f"    {label:40} {shape:12} {_fmt(c['max_abs'], '10.3g')} "
                         f"{_fmt(c['rel'], '10.3g')} {_fmt(c['sqnr_db'], '8.2f')} "
                         f"{_fmt(c.get('max_steps'), '9.2f')} {_fmt(c.get('mean_steps'), '10.4f')}")
        g = run.get("greedy")
        if g is not None:
            on = f" (on the {g['on']})" if g.get("on") else ""
            if g["equal"]:
                lines.append(f"    greedy{on}: {len(g['generated'])} tokens, identical")
            else:
                lines.append(f"    greedy{on}: DIFFERENT at {g['first_difference']}: got "
                             f"{g['generated']}, expected {g['expected']}")
        for e in run.get("errors", []):
            lines.append(f"    error: {e}")
        if run.get("nodes") is not None:
            lines.append(format_nodes(run["nodes"]))
    for r in report.get("smoke", []):
        lines.append(f"  synthetic run [{OPT_LEVELS[r['opt_level']]}] ({r['seconds']:.1f} s): "
                     + ", ".join(f"{k} {'x'.join(map(str, v))}"
                                 for k, v in r["shapes"].items() if not k.startswith("present."))
                     + f"; {sum(k.startswith('present.') for k in r['shapes'])} state outputs; "
                     f"greedy ids {r['generated']}")
    if report["failures"]:
        lines.append(f"  FAILED ({len(report['failures'])}):")
        lines += [f"    {f}" for f in report["failures"]]
    else:
        lines.append(f"  all checks pass ({report['seconds']['total']:.1f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Check an `autoneural export onnx` directory with onnx.checker and ONNX "
                    "Runtime against `autoneural dump` / `autoneural run --json` outputs.")
    ap.add_argument("--export", required=True, metavar="OUT",
                    help="export directory (export.json + .onnx files)")
    ap.add_argument("--dump", action="append", default=[], metavar="D",
                    help="`autoneural dump --out D` directory of the same model (repeatable)")
    ap.add_argument("--expect-tokens", action="append", default=[], metavar="RUN.json",
                    help="`autoneural run --json` output for the same request as the dump at the "
                         "same position (repeatable; one per --dump)")
    ap.add_argument("--float-tolerance", type=float, default=1e-4,
                    help="float export: max|a-b| / max|b| bound (default 1e-4)")
    ap.add_argument("--min-sqnr", type=float, default=40.0, help="SQNR bound in dB (default 40)")
    ap.add_argument("--max-steps", type=float, default=None, metavar="N",
                    help="bound on max |a-b| / scale where export.json gives the quantization")
    ap.add_argument("--opt-level", action="append", default=None, choices=list(OPT_LEVELS),
                    help="ONNX Runtime graph optimization level (repeatable; default all; "
                         "`disable` is ORT_DISABLE_ALL)")
    ap.add_argument("--sensitivity", action="store_true",
                    help="also report how far ONNX Runtime's own features and logits move when "
                         "one input pixel moves by one quantization step (no bar; the floor "
                         "two implementations differing in one rounding end up apart by)")
    ap.add_argument("--nodes", action="store_true",
                    help="also compare every node output of dumps written with `autoneural dump "
                         "--nodes` (no bar; shows where the export departs from the engine)")
    ap.add_argument("--isolated", action="store_true",
                    help="also run the connector and the language model on the engine's own "
                         "upstream tensors (where a disagreement starts)")
    ap.add_argument("--smoke", action="store_true",
                    help="also run every part on synthetic inputs (random pixels, the image's "
                         "tokens between 8 random text tokens, prefill + 4 greedy decode steps): "
                         "loads, output shapes, no NaN/inf; for exports with no dump, such as "
                         "`export onnx --preset`")
    ap.add_argument("--no-full-check", action="store_true",
                    help="onnx.checker without full_check (no strict shape inference)")
    ap.add_argument("--disable-optimizer", action="append", default=[], metavar="NAME",
                    help="an ONNX Runtime graph transformer to leave out, e.g. "
                         "QDQPropagationTransformer (repeatable; for diagnosis)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", metavar="REPORT", help="write the report as JSON here")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        print(f"error: {e}; install the pinned versions: pip install -r "
              "python/tests/requirements.txt", file=sys.stderr)
        return 2
    th = Thresholds(args.float_tolerance, args.min_sqnr, args.max_steps)
    try:
        report = check_export(args.export, args.dump, args.expect_tokens, th,
                              tuple(args.opt_level or ["all"]), args.isolated,
                              not args.no_full_check, sensitivity=args.sensitivity,
                              nodes=args.nodes,
                              threads=args.threads,
                              disabled_optimizers=args.disable_optimizer,
                              smoke=args.smoke)
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(_finite(report), indent=1) + "\n")
        except OSError as e:
            print(f"error: cannot write {args.json}: {e}", file=sys.stderr)
            return 2
    return 0 if report["ok"] else 1


def _finite(v):
    """The report with infinities as strings ("inf"): strict JSON."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, (np.integer, np.floating)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


if __name__ == "__main__":
    sys.exit(main())
