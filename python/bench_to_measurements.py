#!/usr/bin/env python3
"""Turns `autoneural bench --json` reports into the CPU profile's measurement file
(profiles/zen5-2c-measured.json), the rows `autoneural npu fit --profile zen5-2c` fits on.

Rows at the fit image size and of the fit language model are marked `fit`; every other row is
`hold_out`, predicted by the fitted profile but never fitted to.

Standard library only. Usage (from the repository root):
  autoneural bench vision --vlm autoneural-1.5b --vlm internvl2-2b --image-size 256,512 \
      --precision float,w8a16,w8a8 --json > bench-vision.json
  autoneural bench lm --preset lfm2-1.2b --preset internlm2-1.8b --precision float,w4a16,w8a8 \
      --thread-counts 2 --prompt 128 --decode 32 --json > bench-lm.json
  python3 python/bench_to_measurements.py bench-vision.json bench-lm.json \
      --fit-size 256 --fit-lm lfm2-1.2b > profiles/zen5-2c-measured.json
"""

from __future__ import annotations

import argparse
import json

VISION_MODEL = {"mobilenetv5-300m": "mobilenetv5_300m_enc", "internvit-300m": "internvit-300m"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--fit-size", type=int, default=256, help="vision rows at this size (InternViT: nearest) are fitted")
    ap.add_argument("--fit-lm", default="lfm2-1.2b", help="language-model rows of this preset are fitted")
    args = ap.parse_args()
    rows = []
    machine = None
    for path in args.reports:
        with open(path) as f:
            rep = json.load(f)
        machine = machine or rep.get("machine")
        src = f"autoneural bench on this machine ({path}), {rep.get('machine', {}).get('cpu', '?')}"
        for v in rep.get("vision", []):
            size = v["image_size"]
            rows.append(dict(
                label=f"{v['model']} {size} px {v['precision']}",
                what="encoder", model=VISION_MODEL[v["model"]], scheme=v["precision"],
                image_size=size, ms=round(v["latency_ms"], 3),
                role="fit" if abs(size - args.fit_size) <= 8 else "hold_out",
                source=f"{src}; {v['threads']} threads"))
        for l in rep.get("lm", []):
            role = "fit" if l["model"] == args.fit_lm else "hold_out"
            base = dict(model=l["model"], scheme=l["precision"], role=role,
                        source=f"{src}; {l['threads']} threads")
            rows.append(dict(label=f"{l['model']} {l['precision']} prefill {l['prompt_tokens']}",
                             what="prefill", prompt_tokens=l["prompt_tokens"],
                             context=l["prompt_tokens"] + l["decode_tokens"] + 1,
                             ms=round(l["prefill_ms"], 3), **base))
            # The decode rate averages the steps from the prompt to the prompt + decode tokens:
            # the middle context stands for them.
            rows.append(dict(label=f"{l['model']} {l['precision']} decode",
                             what="decode", context=l["prompt_tokens"] + l["decode_tokens"] // 2,
                             ms=round(1000.0 / l["decode_tok_s"], 3), **base))
    doc = dict(profile="zen5-2c",
               description="autoneural's own latencies on this machine (real shapes, random weights), "
                           "from `autoneural bench` via python/bench_to_measurements.py. Rows marked fit set the "
                           "zen5-2c profile's factors (`autoneural npu fit --profile zen5-2c`); hold_out rows "
                           "test them.",
               rows=rows)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
