"""`autoneural export onnx` of the shipped model, checked by python/check_onnx.py in the official
`onnx` checker and ONNX Runtime against the engine itself: the default-scheme and w8a8 QDQ exports
against the integer path (`autoneural dump` / `run --json` on the quantized directory), the float
export against the float path, and a static-shape export (fixed prefill chunk and context).

    AUTONEURAL=target/release/autoneural python -m pytest -q python/tests/test_onnx_export.py

Every quantize, export, dump and run happens once per session (the `lab` fixture caches them).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("AUTONEURAL", str(ROOT / "target" / "release" / "autoneural"))
MODEL = ROOT / "models" / "autoneural-cockpit-tiny"

sys.path.insert(0, str(ROOT / "python"))
import check_onnx  # noqa: E402

# Held-out questions the way tests/trained_model.rs makes them: a freshly generated cockpit set
# (a seed the model never saw), its test split; one question per type below, on distinct images
# where the split allows, covering the three scene kinds.
HELD_OUT_SEED, HELD_OUT_COUNT = 20261125, 300
QUESTION_TYPES = ["speed", "warning_lights", "rear_passengers", "driver_phone", "traffic_light",
                  "sign"]
# Calibration: the training split of a small set with another unseen seed (as the vision SQNR test
# of tests/trained_model.rs calibrates), 24 questions on 12 images: a couple of seconds.
CALIB_SEED, CALIB_COUNT, CALIB_QUESTIONS = 20261201, 12, 24

# The static export: small fixed shapes, so the prompts (about 85 tokens) take several chunks.
STATIC_CHUNK, STATIC_CONTEXT = 16, 256

MIN_SQNR_DB = 40.0  # the bar for QDQ vs the integer path
FLOAT_TOLERANCE = 1e-4  # the float export vs the float path, max|a-b| / max|b|
# Max |ONNX Runtime - integer path| / scale of the output's edge quantization, per export and
# tensor, over the six held-out questions: just above the measured maximum (ONNX Runtime 1.32,
# CPU, ORT_ENABLE_ALL, one thread). The two sides differ by single roundings (ONNX Runtime's
# float32 sums at near-ties, round-half-to-even vs the integer path's half-away-from-zero, integer
# norms and lookup tables vs float ops) that the encoder and the language model spread: moving one
# input pixel by one step moves ONNX Runtime's own outputs as far (check_onnx.py --sensitivity).
# A larger difference is a bug in the export or the integer path: do not loosen.
MAX_STEPS = {
    # 16-bit activations: measured features 13, image embeddings 12, logits 17 steps (70 dB).
    "default": {"features": 14, "image_embeds": 13, "logits": 18},
    # 8-bit activations (end to end; see test_w8a8_export_agrees_with_the_integer_path).
    "w8a8": {"features": 10, "image_embeds": 8, "logits": 11},
    # The default scheme with fixed shapes: the same numbers as the dynamic export.
    "static": {"features": 14, "image_embeds": 13, "logits": 18},
}


def cli(*args):
    """Run the binary; fail the test with the command and its stderr when it fails."""
    cmd = [BIN, *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` exited {p.returncode}:\n{p.stderr[-3000:]}", pytrace=False)
    return p.stdout


class Lab:
    """Quantized directories, exports, dumps and runs, each made once on first use."""

    def __init__(self, work: pathlib.Path):
        self.work = work
        self.cache = {}
        self.export_checked = False

    def once(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def require_export(self):
        if self.export_checked:
            return
        if not pathlib.Path(BIN).is_file():
            pytest.fail(f"no autoneural binary at {BIN} (set AUTONEURAL)", pytrace=False)
        p = subprocess.run([BIN, "export", "onnx", "--help"], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"{BIN} has no `export onnx` command (`export onnx --help` exited "
                        f"{p.returncode}: {p.stderr.strip()[:300]})", pytrace=False)
        self.export_checked = True

    def questions(self):
        def make():
            ds = self.work / "heldout"
            cli("dataset", "cockpit", "--count", HELD_OUT_COUNT, "--seed", HELD_OUT_SEED,
                "--out", ds)
            rows = [json.loads(line) for line in (ds / "test.jsonl").read_text().splitlines()
                    if line.strip()]
            picked, images = [], set()
            for qt in QUESTION_TYPES:
                of_type = [r for r in rows if r["type"] == qt]
                assert of_type, f"no {qt} question in the test split"
                fresh = [r for r in of_type if r["image"] not in images]
                r = (fresh or of_type)[0]
                images.add(r["image"])
                picked.append({**r, "image": str(ds / r["image"])})
            return picked
        return self.once("questions", make)

    def calibration(self):
        def make():
            ds = self.work / "calibset"
            cli("dataset", "cockpit", "--count", CALIB_COUNT, "--seed", CALIB_SEED, "--out", ds)
            rows = [json.loads(line) for line in (ds / "train.jsonl").read_text().splitlines()
                    if line.strip()][:CALIB_QUESTIONS]
            f = self.work / "calib.jsonl"
            f.write_text("".join(json.dumps({"image": str(ds / r["image"]),
                                             "prompt": r["question"]}) + "\n" for r in rows))
            return f
        return self.once("calibration", make)

    def model(self, name):
        """The model directory a case runs on: `float` (the shipped model) or a scheme."""
        if name == "float":
            return MODEL

        def make():
            q = self.work / f"q-{name}"
            cli("quantize", "--model", MODEL, "--calibration", self.calibration(), "--scheme",
                name, "--out", q)
            return q
        return self.once(("model", name), make)

    def export(self, name):
        """`default`, `w8a8`, `float` (dynamic) or `static` (the default scheme, fixed shapes)."""
        self.require_export()

        def make():
            out = self.work / f"onnx-{name}"
            if name == "static":
                cli("export", "onnx", "--model", self.model("default"), "--out", out, "--static",
                    "--prefill-chunk", STATIC_CHUNK, "--context", STATIC_CONTEXT)
            else:
                cli("export", "onnx", "--model", self.model(name), "--out", out)
            return out
        return self.once(("export", name), make)

    def cases(self, name):
        """(dump dirs, run --json files) of the held-out questions on model `name`."""
        def make():
            dumps, runs = [], []
            for k, q in enumerate(self.questions()):
                d = self.work / f"dump-{name}-{k}"
                cli("dump", "--model", self.model(name), "--image", q["image"], "--prompt",
                    q["question"], "--out", d)
                r = self.work / f"run-{name}-{k}.json"
                r.write_text(cli("run", "--model", self.model(name), "--image", q["image"],
                                 "--prompt", q["question"], "--json"))
                dumps.append(d)
                runs.append(r)
            return dumps, runs
        return self.once(("cases", name), make)


    def one_step_floor(self, name):
        """Per held-out question, how far the integer path of model `name` moves from itself
        when one pixel (an element near the middle) moves by exactly one step of the encoder's
        input quantization: {"features": SQNR dB, "logits": SQNR dB} between the engine's own
        two runs. Any two implementations that differ in a single rounding anywhere in the
        encoder end up about this far apart."""
        def make():
            m = check_onnx.load_manifest(self.export(name))
            q = check_onnx.io_quant(m, check_onnx.VISION, "pixels", outputs=False)
            assert q and q.get("scale"), "export.json gives no quantization for the pixels"
            scale = q["scale"]
            floors = []
            for k, (d, q_) in enumerate(zip(self.cases(name)[0], self.questions())):
                base = check_onnx.load_dump(d)
                px = np.array(base["pixels"][0], np.float32)
                flat = px.reshape(-1)
                i = flat.size // 2 + 17
                # One level up (down at the top of the pixel range): the quantized input moves
                # by exactly one step unless it saturates, which the finite-floor check catches.
                flat[i] += scale if flat[i] + scale <= 1.0 else -scale
                f = self.work / f"pixels-{name}-{k}.npy"
                np.save(f, px)
                d2 = self.work / f"dump-{name}-{k}-one-step"
                cli("dump", "--model", self.model(name), "--pixels", f, "--prompt",
                    q_["question"], "--out", d2)
                moved = check_onnx.load_dump(d2)
                floors.append({
                    "features": check_onnx.compare(moved["vision_features"],
                                                   base["vision_features"])["sqnr_db"],
                    "logits": check_onnx.compare(moved["logits"], base["logits"])["sqnr_db"]})
            return floors
        return self.once(("floor", name), make)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    return Lab(tmp_path_factory.mktemp("onnx-export"))


def failure_text(report):
    return "\n".join(report["failures"]) + "\n\n" + check_onnx.format_report(report)


def check(lab, export, model, thresholds):
    out = lab.export(export)
    dumps, runs = lab.cases(model)
    # One ONNX Runtime thread: its float sums (and so which near-ties flip) depend on the split.
    report = check_onnx.check_export(out, dumps, runs, thresholds, skip_files=True, threads=1)
    print(check_onnx.format_report(report))  # shown with -s or on failure
    assert len(report["runs"]) == len(dumps)
    assert all(r["greedy"] is not None for r in report["runs"])
    return report


@pytest.mark.parametrize("export", ["default", "w8a8", "float", "static"])
def test_export_passes_onnx_checker_and_matches_its_manifest(lab, export):
    files = check_onnx.check_files(lab.export(export))
    names = {f["file"] for f in files}
    parts = (["language_model_prefill.onnx", "language_model_decode.onnx"] if export == "static"
             else ["language_model.onnx"])
    assert names == {"vision_encoder.onnx", "connector.onnx", "embed_tokens.onnx", *parts}
    bad = [f for f in files if not f["ok"]]
    assert not bad, json.dumps(bad, indent=1)
    manifest = check_onnx.load_manifest(lab.export(export))
    assert manifest["precision"] == ("float" if export == "float" else "qdq")


@pytest.mark.parametrize("scheme", ["default", "static"])
def test_qdq_export_agrees_with_the_integer_path(lab, scheme):
    model = "default" if scheme == "static" else scheme
    report = check(lab, scheme, model, check_onnx.Thresholds(min_sqnr=MIN_SQNR_DB))
    assert report["precision"] == "qdq"
    # SQNR >= 40 dB, identical greedy answers, no ONNX Runtime failure.
    assert report["ok"], failure_text(report)
    for t in ("features", "image_embeds", "logits"):
        steps = check_onnx.worst(report, t, "max_steps")
        assert steps is not None, f"export.json gives no quantization for {t}"
        assert steps <= MAX_STEPS[scheme][t], (
            f"{scheme}: {t} differs by {steps:.2f} output steps > {MAX_STEPS[scheme][t]}\n"
            + check_onnx.format_report(report))


# w8a8 end to end (features, logits): just below the measured worst (26.6 dB over the six
# questions); see test_w8a8_export_agrees_with_the_integer_path for why 40 dB cannot hold there.
W8A8_END_TO_END_SQNR_DB = 25.0
# ... and within this much of the integer path's own one-step floor (Lab.one_step_floor): the
# export is as close to the engine as the engine is to itself after one rounding goes the other
# way (measured 2026-12-05: export 26.9-28.4 dB features, floor 27.0-29.0 dB).
FLOOR_MARGIN_DB = 3.0


def test_w8a8_export_agrees_with_the_integer_path(lab):
    """8-bit activations: each part given the integer path's own inputs agrees to >= 40 dB (the
    connector and the language model; the encoder's input is the pixels themselves), greedy
    answers are identical end to end, and the end-to-end features and logits stay within a few
    8-bit steps (>= 25 dB). The issue's 40 dB end to end does not hold at 8 bits (measured 26-29
    dB): a single
    rounding that ONNX Runtime's float sums take the other way at a near-tie in an early layer
    grows through the 8-bit encoder as any one-step input change does (the integer path itself is
    28 dB from the float model there), so no export of this encoder can reach it without being
    bit-exact (`check_onnx.py --sensitivity` measures the spread of a one-step pixel change,
    `--nodes` where the first difference appears)."""
    out = lab.export("w8a8")
    dumps, runs = lab.cases("w8a8")
    report = check_onnx.check_export(out, dumps, runs, check_onnx.Thresholds(min_sqnr=0.0),
                                     skip_files=True, threads=1, isolated=True)
    print(check_onnx.format_report(report))
    assert report["ok"], failure_text(report)  # greedy answers, no ONNX Runtime failure
    assert len(report["runs"]) == len(dumps)
    for run in report["runs"]:
        t = run["tensors"]
        for isolated in ("image_embeds (engine's features)", "logits (engine's image embeddings)"):
            assert t[isolated]["sqnr_db"] >= MIN_SQNR_DB, (isolated, t[isolated])
        for name in ("features", "logits"):
            assert t[name]["sqnr_db"] >= W8A8_END_TO_END_SQNR_DB, (name, t[name])
    # The floor: the integer path against itself after one pixel moves one input step. It is
    # below 40 dB at 8 bits, and the export sits at it.
    floors = lab.one_step_floor("w8a8")
    print("engine's one-step floor (w8a8):", floors)
    for name in ("features", "logits"):
        finite = [f[name] for f in floors if np.isfinite(f[name])]
        assert finite, f"no pixel step moved the {name}"
        assert min(finite) < MIN_SQNR_DB, (name, finite)
        got = min(r["tensors"][name]["sqnr_db"] for r in report["runs"])
        assert got >= min(finite) - FLOOR_MARGIN_DB, (name, got, finite)
    for t in ("features", "image_embeds", "logits"):
        steps = check_onnx.worst(report, t, "max_steps")
        assert steps is not None and steps <= MAX_STEPS["w8a8"][t], (t, steps)


def test_float_export_matches_the_float_path(lab):
    report = check(lab, "float", "float",
                   check_onnx.Thresholds(float_tolerance=FLOAT_TOLERANCE, min_sqnr=MIN_SQNR_DB))
    assert report["precision"] == "float"
    assert report["ok"], failure_text(report)
    for t in ("features", "image_embeds", "logits"):
        assert check_onnx.worst(report, t, "rel") <= FLOAT_TOLERANCE


def test_check_onnx_command_line(lab, tmp_path):
    """The script as a user runs it: a table, a JSON report, exit 0; exit 1 on a failed check and
    2 with one error line (no traceback) when the run JSON belongs to another request."""
    out = lab.export("default")
    dumps, runs = lab.cases("default")
    script = ROOT / "python" / "check_onnx.py"
    report = tmp_path / "report.json"
    steps = str(MAX_STEPS["default"]["logits"])
    p = subprocess.run([sys.executable, script, "--export", out, "--dump", dumps[0],
                        "--expect-tokens", runs[0], "--max-steps", steps, "--json", report],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "greedy:" in p.stdout and "all checks pass" in p.stdout
    assert json.loads(report.read_text())["ok"] is True
    p = subprocess.run([sys.executable, script, "--export", out, "--dump", dumps[0],
                        "--min-sqnr", "1000"], capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    p = subprocess.run([sys.executable, script, "--export", out, "--dump", lab.cases("float")[0][0],
                        "--expect-tokens", runs[1]], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr, \
        p.stderr


@pytest.mark.parametrize("export", ["default", "static"])
def test_smoke_run_needs_no_dump(lab, export, tmp_path):
    """`check_onnx.py --smoke` (how the random-weight 1.5B export is checked): every part runs
    on synthetic inputs with the shapes export.json promises; a part ONNX Runtime cannot load is
    a failure, not a traceback."""
    out = lab.export(export)
    manifest = check_onnx.load_manifest(out)
    report = check_onnx.check_export(out, skip_files=True, threads=1, smoke=True)
    assert report["ok"], failure_text(report)
    (r,) = report["smoke"]
    tokens = manifest["image"]["tokens"]
    assert r["shapes"]["image_embeds"][0] == tokens
    assert r["shapes"]["logits (prefill)"][0] == tokens + 8
    assert r["shapes"]["logits (decode)"][0] == 1
    assert len(r["generated"]) == 5
    assert sum(k.startswith("present.") for k in r["shapes"]) == len(manifest["states"])

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "connector.onnx").write_bytes(b"not a protobuf")
    report = check_onnx.check_export(broken, skip_files=True, threads=1, smoke=True)
    assert not report["ok"]
    assert any("connector" in f and "cannot load" in f for f in report["failures"]), \
        report["failures"]
