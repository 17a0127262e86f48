#!/usr/bin/env python3
"""Write the embedded default model `models/autoneural-tiny-random/` and the sample image.

The model is a small AutoNeural (MobileNetV5 encoder with every block type, MSFA to 16x16 = 256
visual tokens at 256 px, LFM2 with a conv/attention layout like LFM2-1.2B) built from the real
reference modules with RANDOM weights; its answers are meaningless. It is a test fixture (the trained
embedded default is `models/autoneural-cockpit-tiny`, from `python/train_cockpit.py`).

Usage (from the repository root): /work/.venv/bin/python python/make_default_model.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import Lfm2ForCausalLM

import make_golden as g

OUT = g.REPO_ROOT / "models" / "autoneural-tiny-random"
SAMPLE = g.REPO_ROOT / "assets" / "sample_dashboard.png"

CARD = """# autoneural-tiny-random

**Random weights. This model answers nonsense.** It was the embedded default until the trained
`models/autoneural-cockpit-tiny` replaced it; it stays as a test fixture: every block type, 256
visual tokens, and a language model that never stops early (so token budgets are exact).

- Vision: MobileNetV5-style encoder, 4 stages, every block type (EdgeResidual, UIR variants, MQA
  with and without K/V stride), MSFA to 16x16x64 (256 visual tokens) at 256x256 input.
- Connector: linear 64 -> 96, GELU, linear 96 -> 64.
- Language: LFM2, 6 layers [conv, conv, attn, conv, conv, attn], hidden 64, 4 heads / 2 KV heads,
  vocabulary 512 (a small byte-level BPE with the LFM2 special tokens).
- Built by `python/make_default_model.py` from timm `MobileNetV5Encoder` and transformers
  `Lfm2ForCausalLM` (versions in `python/requirements.txt`), seed 7.
"""


def main() -> None:
    g.set_all_seeds(7)
    gen = torch.Generator().manual_seed(7)
    vcfg = dict(g.VISION_ALL_BLOCKS)
    vcfg["block_strings"] = [list(s) for s in vcfg["block_strings"]]
    enc = g.build_vision_encoder(vcfg, layer_scale=True)
    g.randomize_vision(enc, gen)
    tcfg = g.make_lm_config(dict(hidden_size=64, intermediate_size=192, block_multiple_of=32, num_hidden_layers=6,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 layer_types=g.lfm2_layout(6, [2, 5]), tie_word_embeddings=True,
                                 max_position_embeddings=4096))
    lm = Lfm2ForCausalLM(tcfg).eval()
    g.randomize_lm(lm, gen, 0.5)
    proj = g.Projector(vcfg["num_features"], 96, tcfg.hidden_size, "gelu")
    g.randomize_projector(proj, gen)

    OUT.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "autoneural",
        "vision_config": vcfg,
        "text_config": tcfg.to_dict(),
        "projector_hidden_size": 96,
        "projector_hidden_act": "gelu",
        "image_token_id": g.IMAGE_TOKEN_ID,
        "image_start_token_id": g.IMAGE_START_TOKEN_ID,
        "image_end_token_id": g.IMAGE_END_TOKEN_ID,
    }
    g.json_dump(config, OUT / "config.json")
    g.write_safetensors(g.autoneural_state_dict(enc, proj, lm), OUT, torch.float32, 1)
    g.TokenizerBundle().write(OUT)
    (OUT / "README.md").write_text(CARD, encoding="utf-8")

    # A simple synthetic dashboard picture for the README command.
    SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (320, 200), (20, 24, 32))
    d = ImageDraw.Draw(img)
    d.ellipse((20, 30, 160, 170), outline=(220, 220, 220), width=4)
    d.line((90, 100, 140, 60), fill=(255, 80, 40), width=4)
    d.rectangle((200, 40, 300, 80), fill=(0, 0, 0), outline=(120, 120, 120))
    d.text((215, 52), "85 km/h", fill=(80, 255, 120))
    d.ellipse((210, 120, 240, 150), fill=(255, 170, 0))
    d.ellipse((260, 120, 290, 150), fill=(230, 30, 30))
    img.save(SAMPLE, optimize=True)
    print(f"wrote {OUT} and {SAMPLE}")


if __name__ == "__main__":
    main()
