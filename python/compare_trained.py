#!/usr/bin/env python3
"""The trained pair side by side, measured the same way: `autoneural-cockpit-tiny` (MobileNetV5 +
LFM2) and `internvl-cockpit-tiny` (InternViT + Llama, the paper's baseline), both trained by
python/train_cockpit*.py on the synthetic cockpit set.

For each model, with the engine's own commands (printed as they run):
  1. accuracy per question type on the held-out test split, float and each integer scheme:
       autoneural eval --model M --dataset D --precision float --precision default --precision w8a8
  2. quantization error of the paper's scheme (vision and connector W8A16, text W4A16; GPTQ
     rounding for vision and connector, the default), calibrated on the first 48 training
     questions, measured on held-out test images and their questions:
       autoneural quantize --model M --calibration calib.jsonl --scheme default --out Q
       autoneural report --model M --quantized Q --images ... --prompts ... --json
     -> SQNR and relative RMS of the vision features (the projector's input: MobileNetV5's MSFA
        output, InternViT's pixel-shuffled tokens), the image embeddings, and the logits; the
        worst vision ops.

Standard library only; the binary is `target/release/autoneural` unless AUTONEURAL says otherwise.
Usage (from the repository root):
  python3 python/compare_trained.py [--dataset data/cockpit-24k] [--out target/trained-pair]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

MODELS = ["models/autoneural-cockpit-tiny", "models/internvl-cockpit-tiny"]
# The node each architecture hands the projector (the paper's "vision features").
FEATURES = ["vision:msfa.norm", "vision:pixel_shuffle"]
EMBEDDINGS = "vision:multi_modal_projector.linear_2"
LOGITS = "text:lm_head"


def run(cmd: list[str], capture: bool = True) -> str:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return out.stdout if capture else ""


def db(op: dict) -> tuple[float, float]:
    """SQNR (dB) and relative RMS (%) from the report's accumulated powers."""
    s, e = op["signal"], op["error"]
    sqnr = math.inf if e == 0 else 10 * math.log10(s / e)
    return sqnr, 100 * math.sqrt(e / s) if s > 0 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="data/cockpit-24k")
    ap.add_argument("--out", default="target/trained-pair")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--report-images", type=int, default=12, help="held-out test images for the report")
    ap.add_argument("--skip-eval", action="store_true", help="only the quantization error")
    args = ap.parse_args()
    binary = os.environ.get("AUTONEURAL", "target/release/autoneural")
    data, out = Path(args.dataset).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "test.jsonl").is_file():
        run([binary, "dataset", "cockpit", "--count", "24000", "--seed", "1", "--out", str(data)], capture=False)

    def split(name: str) -> list[dict]:
        return [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines() if line.strip()]

    train, test = split("train"), split("test")
    calib = out / "calib.jsonl"
    calib.write_text("".join(json.dumps({"image": str(data / r["image"]), "prompt": r["question"]}) + "\n"
                             for r in train[:48]))
    images, prompts = [], []
    for r in test:
        img = str(data / r["image"])
        if img not in images and len(images) < args.report_images:
            images.append(img)
            prompts.append(r["question"])

    results = {}
    for model in args.models:
        name = Path(model).name
        res = {}
        if not args.skip_eval:
            res["eval_table"] = run([binary, "eval", "--model", model, "--dataset", str(data),
                                     "--precision", "float", "--precision", "default", "--precision", "w8a8"])
            print(res["eval_table"], flush=True)
        q = out / f"{name}-default"
        run([binary, "quantize", "--model", model, "--calibration", str(calib), "--scheme", "default",
             "--out", str(q), "--force"])
        rep = json.loads(run([binary, "report", "--model", model, "--quantized", str(q), "--json",
                              "--images", *images, "--prompts", *prompts]))
        ops = rep["ops"]
        feat = next(k for k in FEATURES if k in ops)
        res["features_node"] = feat
        res["features"] = db(ops[feat])
        res["embeddings"] = db(ops[EMBEDDINGS])
        res["logits"] = db(ops[LOGITS])
        vision = sorted(((db(v)[0], k) for k, v in ops.items() if k.startswith("vision:")))
        res["worst_vision"] = vision[:5]
        results[name] = res

    print(f"\n## Quantization error, scheme default (vision/connector W8A16, text W4A16), "
          f"{len(images)} held-out images and their questions\n")
    print("| model | vision features | image embeddings | logits |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        f, e, lg = r["features"], r["embeddings"], r["logits"]
        print(f"| {name} | {f[0]:.2f} dB ({f[1]:.2f} %) | {e[0]:.2f} dB ({e[1]:.2f} %) | "
              f"{lg[0]:.2f} dB ({lg[1]:.2f} %) |")
    print("\nWorst vision ops (SQNR dB):\n")
    for name, r in results.items():
        print(f"- {name} (features node `{r['features_node']}`): "
              + ", ".join(f"`{k}` {s:.2f}" for s, k in r["worst_vision"]))
    (out / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
