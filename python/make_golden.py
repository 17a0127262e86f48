#!/usr/bin/env python3
"""Build small random AutoNeural models from the REAL reference modules and write golden outputs.

Reference modules (ground truth, see python/requirements.txt for the pinned versions):
  * vision:    timm ``MobileNetV5Encoder`` (timm/models/mobilenetv5.py) built from block strings with
               ``decode_arch_def`` and the same constructor arguments ``_gen_mobilenet_v5`` passes for
               ``mobilenetv5_300m_enc`` (RmsNorm2d, GELU(tanh), pad_type "same", layer scale, ...).
  * connector: Linear(C_vis -> P, bias) -> GELU ("gelu" erf / "gelu_pytorch_tanh") -> Linear(P -> H, bias).
  * language:  transformers ``Lfm2ForCausalLM`` / ``Lfm2Config``.
  * baseline:  transformers ``InternVLForConditionalGeneration`` (``InternVLVisionConfig`` + a ``LlamaConfig``
               text model) and a plain ``LlamaForCausalLM`` (INTERNVL_CASES, listed under
               "baseline_cases" in tests/golden/manifest.json, not in README.md). Their model
               directories are what ``save_pretrained`` writes (+ tokenizer); they are re-loaded with
               ``from_pretrained`` and evaluated in float64 like the other cases.

Every model directory written here is re-loaded from disk by ``load_autoneural_dir`` (a small Python
reference loader of the on-disk format) and the golden outputs are computed from that re-loaded
model, so the files and the outputs are guaranteed to agree.

Usage (from the repository root):
    /work/.venv/bin/python python/make_golden.py            # writes tests/golden/
    /work/.venv/bin/python python/make_golden.py --only text_one_token
    /work/.venv/bin/python python/make_golden.py --only internvl_layernorm_p8 --only llama_plain_text

The script is deterministic: running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import safetensors
import timm
import tokenizers
import transformers
from safetensors.torch import load_file, save_file
from timm.layers import RmsNorm2d
from timm.models import mobilenetv5 as timm_mnv5
from timm.models._efficientnet_blocks import EdgeResidual, MobileAttention, UniversalInvertedResidual
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.mobilenetv5 import (
    MobileNetV5,
    MobileNetV5Encoder,
    MobileNetV5MultiScaleFusionAdapter,
    _GELU,
)
from tokenizers import Tokenizer
from transformers import (
    GenerationConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    Lfm2Config,
    Lfm2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.activations import ACT2FN

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "golden"

transformers.logging.set_verbosity_error()

# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def set_all_seeds(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


# --------------------------------------------------------------------------------------------------
# Tokenizer: small byte-level BPE with the exact LFM2 special-token ids
# --------------------------------------------------------------------------------------------------

VOCAB_SIZE = 512
IMAGE_TOKEN_ID = 396
IMAGE_START_TOKEN_ID = 498
IMAGE_END_TOKEN_ID = 499
BOS_ID, EOS_ID, PAD_ID = 1, 7, 0

SPECIAL_TOKENS = {
    0: "<|pad|>",
    1: "<|startoftext|>",
    2: "<|endoftext|>",
    3: "<|fim_pre|>",
    4: "<|fim_mid|>",
    5: "<|fim_suf|>",
    6: "<|im_start|>",
    7: "<|im_end|>",
    8: "<|tool_list_start|>",
    9: "<|tool_list_end|>",
    10: "<|tool_call_start|>",
    11: "<|tool_call_end|>",
    12: "<|tool_response_start|>",
    13: "<|tool_response_end|>",
    IMAGE_TOKEN_ID: "<image>",
    IMAGE_START_TOKEN_ID: "<|image_start|>",
    IMAGE_END_TOKEN_ID: "<|image_end|>",
}

# The LLAMA3 split regex (llama.cpp maps the LFM2 pre-tokenizer to it).
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

PRE_TOKENIZER_JSON = {
    "type": "Sequence",
    "pretokenizers": [
        {
            "type": "Split",
            "pattern": {"Regex": LLAMA3_SPLIT_REGEX},
            "behavior": "Isolated",
            "invert": False,
        },
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ],
}

# English training text for the BPE merges (written for this file; no external data).
BPE_CORPUS = """\
The car drove slowly through the quiet town while the rain kept falling on the wide road.
A small dog sat near the door of the house and watched the people walk past in their coats.
The driver asked the assistant to find the nearest station, and the screen showed a map with
three routes. The first route was the fastest, the second was the shortest, and the third one
went along the river where the trees were green and the water was calm.
In the morning the children walked to school. They talked about the weather, the new teacher,
and the game they wanted to play after lunch. One of them said that the sky looked like it would
rain again, but the sun came out before noon and the streets were dry by the afternoon.
The camera in front of the car can see the lane markings, the traffic lights and the signs.
When the light turns red the car stops, and when the light turns green it starts to move again.
The system reads the signs and tells the driver about the speed limit and the next turn.
What is in this picture? There is a red car parked next to a white building with tall windows.
A man in a blue jacket is standing on the street and holding a cup of coffee. Behind him there
is a shop with a green sign and a bicycle leaning against the wall.
Please describe the image in detail. Count the people, name the colors, and read any text that
you can see. If you are not sure about something, say that you are not sure.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore.
How many windows does the building have? Where is the nearest parking place? Is the road wet?
It was a bright cold day in April, and the clocks were striking thirteen.
All happy families are alike; each unhappy family is unhappy in its own way.
It is a truth universally acknowledged, that a single man in possession of a good fortune,
must be in want of a wife. Call me Ishmael. Some years ago, never mind how long precisely,
having little or no money in my purse, and nothing particular to interest me on shore,
I thought I would sail about a little and see the watery part of the world.
The numbers 1, 2, 3, 10, 42, 100 and 2025 appear in the text as well as the time 12:30.
"""


def _pretokenize(text: str) -> list[str]:
    tok = Tokenizer.from_str(
        json.dumps(
            {
                "version": "1.0",
                "truncation": None,
                "padding": None,
                "added_tokens": [],
                "normalizer": None,
                "pre_tokenizer": PRE_TOKENIZER_JSON,
                "post_processor": None,
                "decoder": None,
                "model": {"type": "WordLevel", "vocab": {"x": 0}, "unk_token": "x"},
            }
        )
    )
    return [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte -> printable unicode mapping (the one ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _learn_bpe(num_merges: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Deterministic byte-level BPE learning (ties broken by the lexicographically smallest pair).

    Returns (new tokens in creation order, merges in rank order)."""
    words = Counter(_pretokenize(BPE_CORPUS))
    seqs = {w: tuple(w) for w in words}
    known = set(_bytes_to_unicode().values())
    new_tokens: list[str] = []
    merges: list[tuple[str, str]] = []
    while len(new_tokens) < num_merges:
        pairs: Counter = Counter()
        for w, f in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += f
        if not pairs:
            raise RuntimeError("BPE corpus too small for the requested vocab size")
        best_count = max(pairs.values())
        best = min(p for p, c in pairs.items() if c == best_count)
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in known:
            known.add(merged)
            new_tokens.append(merged)
        for w in words:
            s = seqs[w]
            out = []
            i = 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = tuple(out)
    return new_tokens, merges


def build_tokenizer_json() -> dict:
    byte_tokens = [_bytes_to_unicode()[b] for b in range(256)]
    n_regular = VOCAB_SIZE - len(SPECIAL_TOKENS)
    new_tokens, merges = _learn_bpe(n_regular - 256)
    regular = byte_tokens + new_tokens
    assert len(regular) == n_regular
    free_ids = [i for i in range(VOCAB_SIZE) if i not in SPECIAL_TOKENS]
    vocab: dict[str, int] = {}
    for i in range(VOCAB_SIZE):
        if i in SPECIAL_TOKENS:
            vocab[SPECIAL_TOKENS[i]] = i
    for tok_id, tok in zip(free_ids, regular):
        vocab[tok] = tok_id
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, s in sorted(SPECIAL_TOKENS.items())
    ]
    bos = SPECIAL_TOKENS[BOS_ID]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZER_JSON,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [BOS_ID], "tokens": [bos]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": [[a, b] for a, b in merges],
        },
    }


CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<|startoftext|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|pad|>",
    "add_bos_token": True,
    "model_max_length": 1000000,
    "chat_template": CHAT_TEMPLATE,
}


_NUM_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:\s*,\s*-?[\d.eE+-]+)*)\s*\]")


def json_dump(obj, path: Path) -> None:
    """Indented JSON with lists of numbers kept on one line."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    text = _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    json.loads(text)
    path.write_text(text + "\n", encoding="utf-8")


class TokenizerBundle:
    def __init__(self) -> None:
        self.json = build_tokenizer_json()
        self.text = json.dumps(self.json, indent=2, ensure_ascii=False) + "\n"
        self.tok = Tokenizer.from_str(self.text)
        assert self.tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
        for i, s in SPECIAL_TOKENS.items():
            assert self.tok.token_to_id(s) == i, (s, i)
        # sanity: round trip and specials inside text
        probe = "<|startoftext|><|im_start|>user\n<|image_start|><image><image><|image_end|>Hi there!<|im_end|>\n"
        ids = self.encode(probe)
        assert ids[:2] == [BOS_ID, 6], ids
        assert ids.count(IMAGE_TOKEN_ID) == 2
        assert self.tok.decode(ids, skip_special_tokens=False) == probe, self.tok.decode(ids, skip_special_tokens=False)
        assert self.tok.encode("Hello", add_special_tokens=True).ids[0] == BOS_ID

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def write(self, model_dir: Path) -> None:
        (model_dir / "tokenizer.json").write_text(self.text, encoding="utf-8")
        json_dump(TOKENIZER_CONFIG, model_dir / "tokenizer_config.json")


def chat_prompt(user_text: str, num_images: int, tokens_per_image: int) -> str:
    image_block = (
        SPECIAL_TOKENS[IMAGE_START_TOKEN_ID]
        + SPECIAL_TOKENS[IMAGE_TOKEN_ID] * tokens_per_image
        + SPECIAL_TOKENS[IMAGE_END_TOKEN_ID]
    )
    return (
        "<|startoftext|><|im_start|>user\n"
        + image_block * num_images
        + user_text
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


# --------------------------------------------------------------------------------------------------
# Vision: timm MobileNetV5Encoder
# --------------------------------------------------------------------------------------------------


def real_mobilenetv5_300m_arch_def() -> list[list[str]]:
    """Capture the arch_def list that timm's _gen_mobilenet_v5 builds for mobilenetv5_300m_enc."""

    class _Captured(Exception):
        pass

    captured = {}
    orig = timm_mnv5.decode_arch_def

    def _capture(arch_def, *args, **kwargs):
        captured["arch"] = [list(s) for s in arch_def]
        raise _Captured()

    timm_mnv5.decode_arch_def = _capture
    try:
        timm_mnv5._gen_mobilenet_v5("mobilenetv5_300m_enc", encoder=True, pad_type="same")
    except _Captured:
        pass
    finally:
        timm_mnv5.decode_arch_def = orig
    arch = captured["arch"]
    assert sum(len(s) for s in arch) == 84, "mobilenetv5_300m_enc should have 84 blocks"
    return arch


def scale_block_string(bs: str, c_map: dict[int, int], mqa_map: dict[int, tuple[int, int]]) -> str:
    """Replace c<N> via c_map and, for mqa blocks, h<N>/d<N> via mqa_map[c]."""
    parts = bs.split("_")
    c = int(next(p[1:] for p in parts if p.startswith("c") and p[1:].isdigit()))
    out = []
    for p in parts:
        if p.startswith("c") and p[1:].isdigit():
            out.append(f"c{c_map[c]}")
        elif parts[0] == "mqa" and p.startswith("h") and p[1:].isdigit():
            out.append(f"h{mqa_map[c][0]}")
        elif parts[0] == "mqa" and p.startswith("d") and p[1:].isdigit():
            out.append(f"d{mqa_map[c][1]}")
        else:
            out.append(p)
    return "_".join(out)


def _block_string_channels(bs: str) -> int:
    return int(re.search(r"_c(\d+)", bs).group(1))


def build_vision_encoder(vcfg: dict, layer_scale: bool = True) -> MobileNetV5Encoder:
    """Mirror _gen_mobilenet_v5('mobilenetv5_300m_enc', encoder=True, pad_type='same') with our block strings.

    MobileNetV5Encoder hard-codes num_features = 2048 (and _create_mnv5_encoder filters a num_features kwarg),
    so for a smaller num_features the MSFA module is rebuilt with the same class and arguments but
    out_chs=num_features (this is what MobileNetV5(..., num_features=N) does). See verify_msfa_equivalence.
    """
    arch = vcfg["block_strings"]
    for stage in arch:
        for bs in stage:
            assert _block_string_channels(bs) % 8 == 0, f"channels of {bs} must be a multiple of 8"
    assert vcfg["stem_size"] % 8 == 0
    channel_multiplier = 1.0
    model_kwargs = dict(
        block_args=decode_arch_def(arch, group_size=None),
        stem_size=vcfg["stem_size"],
        fix_stem=channel_multiplier < 1.0,
        round_chs_fn=partial(round_channels, multiplier=channel_multiplier),
        norm_layer=RmsNorm2d,
        act_layer=_GELU,
        layer_scale_init_value=1e-5 if layer_scale else None,
        pad_type="same",
        msfa_indices=tuple(vcfg["msfa_indices"]),
        msfa_output_resolution=vcfg["msfa_output_resolution"],
    )
    enc = MobileNetV5Encoder(**model_kwargs)
    nf = vcfg["num_features"]
    if nf != enc.num_features:
        enc.num_features = enc.head_hidden_size = nf
        enc.msfa = MobileNetV5MultiScaleFusionAdapter(
            in_chs=enc.msfa_in_chs,
            out_chs=nf,
            output_resolution=enc.msfa_output_resolution,
            norm_layer=RmsNorm2d,
            act_layer=_GELU,
        )
    check_vision_structure(enc, vcfg)
    return enc.eval()


def check_vision_structure(enc: MobileNetV5Encoder, vcfg: dict) -> None:
    arch = vcfg["block_strings"]
    assert enc.conv_stem.conv.out_channels == vcfg["stem_size"]
    # every stage must start with a stride-2 block so that feature_info index == stage index
    # (forward_features counts stages, msfa_indices index feature_info).
    assert len(enc.feature_info) == len(arch) + 1
    for i, fi in enumerate(enc.feature_info):
        assert fi["stage"] == i, enc.feature_info
    assert len(enc.blocks) == len(arch)
    in_chs = vcfg["stem_size"]
    for stage, stage_strs in zip(enc.blocks, arch):
        assert len(stage) == len(stage_strs)
        for blk, bs in zip(stage, stage_strs):
            c = _block_string_channels(bs)
            e = re.search(r"_e([\d.]+)", bs)
            if isinstance(blk, EdgeResidual):
                assert bs.startswith("er_")
                assert blk.conv_pwl.out_channels == c
                assert blk.conv_exp.out_channels == int(in_chs * float(e.group(1)))
            elif isinstance(blk, UniversalInvertedResidual):
                assert bs.startswith("uir_")
                assert blk.pw_proj.conv.out_channels == c
                assert blk.pw_exp.conv.out_channels == int(in_chs * float(e.group(1)))
            elif isinstance(blk, MobileAttention):
                assert bs.startswith("mqa_")
                h = int(re.search(r"_h(\d+)", bs).group(1))
                d = int(re.search(r"_d(\d+)", bs).group(1))
                assert blk.attn.output.proj.out_channels == c
                assert blk.attn.query.proj.out_channels == h * d
                assert blk.attn.key.proj.out_channels == d
            else:
                raise AssertionError(type(blk))
            in_chs = c
    assert enc.msfa.ffn.pw_proj.conv.out_channels == vcfg["num_features"]
    assert enc.msfa.norm.weight.shape[0] == vcfg["num_features"]


def verify_msfa_equivalence(enc: MobileNetV5Encoder, vcfg: dict, x: torch.Tensor, layer_scale: bool) -> None:
    """Cross-check against timm's MobileNetV5 (which takes num_features natively) with the same weights."""
    ref = MobileNetV5(
        block_args=decode_arch_def(vcfg["block_strings"], group_size=None),
        num_classes=0,
        stem_size=vcfg["stem_size"],
        fix_stem=False,
        num_features=vcfg["num_features"],
        pad_type="same",
        msfa_indices=tuple(vcfg["msfa_indices"]),
        msfa_output_resolution=vcfg["msfa_output_resolution"],
        round_chs_fn=partial(round_channels, multiplier=1.0),
        norm_layer=RmsNorm2d,
        act_layer=_GELU,
        layer_scale_init_value=1e-5 if layer_scale else None,
    ).eval()
    ref.load_state_dict(enc.state_dict(), strict=True)
    with torch.no_grad():
        a = enc.forward_features(x)
        b = ref.forward_features(x)
    assert torch.equal(a, b), (a - b).abs().max()


def randomize_vision(enc: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("layer_scale.gamma"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name == "conv_stem.conv.bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                assert name.endswith(".weight") and ("bn" in name or "norm" in name), name
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                gain = 1.0
                if name.endswith("attn.query.proj.weight") or name.endswith("attn.key.proj.weight"):
                    gain = 1.25  # slightly peaked attention so the MQA blocks matter
                p.copy_(torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in)))
            else:
                raise AssertionError(f"unexpected vision parameter {name} {tuple(p.shape)}")


# --------------------------------------------------------------------------------------------------
# Connector and language model
# --------------------------------------------------------------------------------------------------


class Projector(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden, bias=True)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden, out_dim, bias=True)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


def randomize_projector(proj: Projector, g: torch.Generator) -> None:
    with torch.no_grad():
        for lin in (proj.linear_1, proj.linear_2):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(lin.weight.shape[1]))
            lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=g))


def randomize_lm(lm: Lfm2ForCausalLM, g: torch.Generator, emb_std: float) -> None:
    tied = lm.config.tie_word_embeddings
    H = lm.config.hidden_size
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name == "model.embed_tokens.weight":
                p.copy_(emb_std * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                assert not tied
                p.copy_(torch.randn(p.shape, generator=g) * (2.5 / math.sqrt(H)))
            elif p.ndim == 1:
                assert name.endswith("norm.weight") or name.endswith("layernorm.weight"), name
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("conv.conv.weight"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                raise AssertionError(f"unexpected LM parameter {name} {tuple(p.shape)}")
    if tied:
        assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()


def make_lm_config(t: dict) -> Lfm2Config:
    kw = dict(t)
    kw.setdefault("vocab_size", VOCAB_SIZE)
    kw.setdefault("bos_token_id", BOS_ID)
    kw.setdefault("eos_token_id", EOS_ID)
    kw.setdefault("pad_token_id", PAD_ID)
    cfg = Lfm2Config(**kw)
    cfg.architectures = ["Lfm2ForCausalLM"]
    return cfg


def to_old_lfm2_keys(d: dict) -> dict:
    """Rewrite a new-style Lfm2Config dict into the original LFM2 release format
    (full_attn_idxs / block_ff_dim / tie_embedding / rope_theta / block_dim / conv_dim / ...)."""
    old = {}
    for k, v in d.items():
        if k in ("layer_types", "intermediate_size", "tie_word_embeddings", "rope_parameters", "full_attn_idxs"):
            continue
        old[k] = v
    old["full_attn_idxs"] = [i for i, t in enumerate(d["layer_types"]) if t == "full_attention"]
    old["block_ff_dim"] = d["intermediate_size"]
    old["tie_embedding"] = d["tie_word_embeddings"]
    old["rope_theta"] = d["rope_parameters"]["rope_theta"]
    old["block_dim"] = d["hidden_size"]
    old["conv_dim"] = d["hidden_size"]
    old["conv_dim_out"] = d["hidden_size"]
    old["num_heads"] = d["num_attention_heads"]
    old["block_norm_eps"] = d["norm_eps"]
    old["use_pos_enc"] = True
    return old


# --------------------------------------------------------------------------------------------------
# On-disk format: writer and Python reference loader
# --------------------------------------------------------------------------------------------------

STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def round_module_(mod: nn.Module, dtype: torch.dtype) -> None:
    """Round parameters to the storage dtype (kept as float32 in memory)."""
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def autoneural_state_dict(enc, proj, lm) -> dict[str, torch.Tensor]:
    sd = {}
    for k, v in enc.state_dict().items():
        sd[f"model.vision_tower.timm_model.{k}"] = v
    for k, v in proj.state_dict().items():
        sd[f"model.multi_modal_projector.{k}"] = v
    for k, v in lm.state_dict().items():
        if k == "lm_head.weight":
            if lm.config.tie_word_embeddings:
                continue
            sd[k] = v
        else:
            assert k.startswith("model."), k
            sd["model.language_model." + k[len("model."):]] = v
    return sd


def write_safetensors(sd: dict[str, torch.Tensor], model_dir: Path, dtype: torch.dtype, num_shards: int) -> None:
    tensors = {k: v.detach().to(dtype).contiguous().clone() for k, v in sd.items()}
    meta = {"format": "pt"}
    if num_shards == 1:
        save_file(tensors, str(model_dir / "model.safetensors"), metadata=meta)
        return
    keys = list(tensors.keys())  # module order: vision, projector, language model, lm_head
    sizes = [tensors[k].numel() * tensors[k].element_size() for k in keys]
    total = sum(sizes)
    target = total / num_shards
    shards: list[list[str]] = [[]]
    acc = 0
    for k, s in zip(keys, sizes):
        if acc >= target * len(shards) and len(shards) < num_shards:
            shards.append([])
        shards[-1].append(k)
        acc += s
    assert len(shards) == num_shards
    weight_map = {}
    for i, shard_keys in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in shard_keys}, str(model_dir / fname), metadata=meta)
        for k in shard_keys:
            weight_map[k] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    json_dump(index, model_dir / "model.safetensors.index.json")


def read_safetensors_dir(model_dir: Path) -> dict[str, torch.Tensor]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        sd = {}
        for fname in sorted(set(wm.values())):
            sd.update(load_file(str(model_dir / fname)))
        assert set(sd) == set(wm)
        return sd
    return load_file(str(model_dir / "model.safetensors"))


def load_autoneural_dir(model_dir: Path, layer_scale_expected: bool):
    """Reference loader of the on-disk autoneural format (mirrors what the Rust loader must do)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "autoneural"
    sd = {k: v.to(torch.float32) for k, v in read_safetensors_dir(model_dir).items()}
    vcfg = cfg["vision_config"]
    layer_scale = any(k.endswith("layer_scale.gamma") for k in sd)
    assert layer_scale == layer_scale_expected
    enc = build_vision_encoder(vcfg, layer_scale=layer_scale)
    pre = "model.vision_tower.timm_model."
    enc.load_state_dict({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, strict=True)
    tcfg = Lfm2Config.from_dict(cfg["text_config"])
    lm = Lfm2ForCausalLM(tcfg).eval()
    pre = "model.language_model."
    lm_sd = {"model." + k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    if tcfg.tie_word_embeddings:
        assert "lm_head.weight" not in sd
        lm_sd["lm_head.weight"] = lm_sd["model.embed_tokens.weight"]
    else:
        lm_sd["lm_head.weight"] = sd["lm_head.weight"]
    lm.load_state_dict(lm_sd, strict=True)
    if tcfg.tie_word_embeddings:
        lm.tie_weights()
    proj = Projector(vcfg["num_features"], cfg["projector_hidden_size"], tcfg.hidden_size, cfg["projector_hidden_act"])
    pre = "model.multi_modal_projector."
    proj.load_state_dict({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, strict=True)
    n_used = sum(1 for k in sd if k.startswith(("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head.")))
    assert n_used == len(sd)
    return cfg, enc.eval(), proj.eval(), lm.eval()


# --------------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def image_features(enc, proj, pixels: torch.Tensor):
    """pixels [N,3,S,S] -> (vision_features [N*R*R, C], image_embeddings [N*R*R, H])."""
    feat = enc.forward_features(pixels)  # [N, C, R, R]
    n, c, r1, r2 = feat.shape
    tokens = feat.flatten(2).transpose(1, 2).reshape(n * r1 * r2, c)  # row-major: token = row*R + col
    return tokens, proj(tokens)


@torch.no_grad()
def build_inputs_embeds(lm, prompt_ids: list[int], img_emb: torch.Tensor | None) -> torch.Tensor:
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    emb = lm.get_input_embeddings()(ids)
    mask = ids == IMAGE_TOKEN_ID
    n_img = int(mask.sum())
    if n_img:
        assert img_emb is not None and img_emb.shape[0] == n_img, (n_img, None if img_emb is None else img_emb.shape)
        emb = emb.masked_scatter(mask.unsqueeze(-1).expand_as(emb), img_emb.to(emb.dtype))
    else:
        assert img_emb is None or img_emb.shape[0] == 0
    return emb


def _margin(logits_row: torch.Tensor) -> tuple[float, float]:
    top2 = torch.topk(logits_row.float(), 2).values
    return float(top2[0] - top2[1]), float(logits_row.abs().max())


@torch.no_grad()
def greedy_reference(lm, inputs_embeds: torch.Tensor, n_new: int):
    """transformers generate() (KV/conv cache path) + an uncached full-recompute greedy loop as a cross-check."""
    gc = GenerationConfig(
        do_sample=False,
        max_new_tokens=n_new,
        min_new_tokens=0,
        eos_token_id=None,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        num_beams=1,
        repetition_penalty=1.0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    # generate() fills unset (None) fields from the model's generation_config, which carries eos 7:
    # clear it there too so generation never stops early (ignore_eos) and no logits processor is active.
    lm.generation_config.eos_token_id = None
    out = lm.generate(inputs_embeds=inputs_embeds, generation_config=gc)
    gen = out.sequences[0].tolist()
    assert len(gen) == n_new, (len(gen), n_new)
    rel_margins = []
    abs_margins = []
    for step, lg in enumerate(out.logits):
        row = lg[0]
        assert int(row.argmax()) == gen[step]
        m, mx = _margin(row)
        abs_margins.append(m)
        rel_margins.append(m / mx)
    # uncached recompute
    emb = inputs_embeds
    embed = lm.get_input_embeddings()
    for step in range(n_new):
        row = lm(inputs_embeds=emb, use_cache=False).logits[0, -1]
        nxt = int(row.argmax())
        assert nxt == gen[step], f"cached/uncached greedy mismatch at step {step}"
        m, mx = _margin(row)
        abs_margins.append(m)
        rel_margins.append(m / mx)
        emb = torch.cat([emb, embed(torch.tensor([[nxt]]))], dim=1)
    return gen, min(rel_margins), min(abs_margins)


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

TINY_VISION = {
    "block_strings": [
        ["er_r1_k3_s2_e2_c8"],
        ["uir_r1_a3_k3_s2_e2_c16", "mqa_r1_k3_h2_s1_d8_c16", "uir_r1_a0_k0_s1_e2_c16"],
    ],
    "stem_size": 8,
    "msfa_indices": [-2, -1],
    "msfa_output_resolution": 16,
    "num_features": 16,
    "image_size": 256,
}

VISION_ALL_BLOCKS = {
    "block_strings": [
        ["er_r1_k3_s2_e4_c16", "er_r1_k3_s1_e4_c16"],
        ["uir_r1_a3_k5_s2_e6_c24", "uir_r1_a5_k0_s1_e4_c24", "uir_r1_a0_k3_s1_e2_c24"],
        ["uir_r1_a5_k5_s2_e6_c32", "uir_r1_a0_k0_s1_e1_c32", "mqa_r1_k3_h4_v2_s1_d8_c32", "uir_r1_a0_k0_s1_e2_c32"],
        ["uir_r1_a5_k5_s2_e6_c40", "mqa_r1_k3_h4_s1_d8_c40", "uir_r1_a0_k0_s1_e2_c40"],
    ],
    "stem_size": 8,
    "msfa_indices": [-2, -1],
    "msfa_output_resolution": 16,
    "num_features": 64,
    "image_size": 256,
}

VISION_512 = {
    "block_strings": [
        ["er_r1_k3_s2_e4_c16", "er_r1_k3_s1_e2_c16"],
        ["uir_r1_a3_k0_s2_e4_c24", "uir_r1_a5_k0_s1_e4_c24"],
        ["uir_r1_a5_k5_s2_e6_c32", "mqa_r1_k3_h2_v2_s1_d16_c32", "uir_r1_a0_k0_s1_e2_c32"],
        ["uir_r1_a3_k5_s2_e4_c40", "mqa_r1_k3_h3_v2_s1_d8_c40", "uir_r1_a0_k0_s1_e2_c40",
         "mqa_r1_k3_h4_s1_d8_c40", "uir_r1_a0_k0_s1_e2_c40"],
    ],
    "stem_size": 16,
    "msfa_indices": [-2, -1],
    "msfa_output_resolution": 16,
    "num_features": 48,
    "image_size": 512,
}

VISION_R8 = {
    "block_strings": [
        ["er_r1_k3_s2_e4_c8", "er_r1_k3_s1_e4_c8"],
        ["uir_r1_a3_k5_s2_e6_c16", "uir_r1_a3_k0_s1_e4_c16"],
        ["uir_r1_a5_k5_s2_e6_c24", "mqa_r1_k3_h2_v2_s1_d8_c24", "uir_r1_a0_k0_s1_e2_c24"],
        ["uir_r1_a5_k5_s2_e6_c32", "mqa_r1_k3_h2_s1_d8_c32", "uir_r1_a0_k0_s1_e2_c32"],
    ],
    "stem_size": 8,
    "msfa_indices": [-3, -1],
    "msfa_output_resolution": 8,
    "num_features": 32,
    "image_size": 256,
}


def real_layout_scaled_vision() -> dict:
    arch = real_mobilenetv5_300m_arch_def()
    c_map = {128: 8, 256: 16, 640: 16, 1280: 32}
    mqa_map = {640: (4, 8), 1280: (4, 8)}  # (heads, key/value dim); kv stride v2 kept in stage 2
    scaled = [[scale_block_string(bs, c_map, mqa_map) for bs in stage] for stage in arch]
    assert sum(len(s) for s in scaled) == 84
    return {
        "block_strings": scaled,
        "stem_size": 8,  # real: 64
        "msfa_indices": [-2, -1],
        "msfa_output_resolution": 16,
        "num_features": 64,  # real: 2048
        "image_size": 256,
    }


def lfm2_layout(n_layers: int, attn_idxs: list[int]) -> list[str]:
    return ["full_attention" if i in attn_idxs else "conv" for i in range(n_layers)]


USER_TEXT_SHORT = "What is in this picture?"
USER_TEXT_TWO = "Compare the two images and describe the car."

LONG_SENTENCES = [
    "The car drove slowly through the quiet town while the rain kept falling on the wide road.",
    "A small dog sat near the door of the house and watched the people walk past in their coats.",
    "The driver asked the assistant to find the nearest station, and the screen showed a map.",
    "In the morning the children walked to school and talked about the weather and the new teacher.",
    "The camera in front of the car can see the lane markings, the traffic lights and the signs.",
    "When the light turns red the car stops, and when it turns green it starts to move again.",
    "There is a red car parked next to a white building with tall windows and a green door.",
    "A man in a blue jacket is standing on the street and holding a cup of coffee.",
    "Please describe the image in detail, count the people, and read any text you can see.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "All happy families are alike; each unhappy family is unhappy in its own way.",
    "I thought I would sail about a little and see the watery part of the world.",
    "The system reads the signs and tells the driver about the speed limit and the next turn.",
    "How many windows does the building have, and where is the nearest parking place?",
]


def long_user_text(tk: TokenizerBundle, target: int) -> str:
    text = ""
    i = 0
    while True:
        cand = (text + " " if text else "") + LONG_SENTENCES[i % len(LONG_SENTENCES)]
        if len(tk.encode(chat_prompt(cand, 0, 0))) > target:
            return text
        text = cand
        i += 1


CASES = [
    dict(
        name="vision_all_blocks_256",
        description=(
            "256x256 input, MSFA output 16x16 without pooling (stage-2 16x16 + stage-3 8x8 nearest-upsampled). "
            "Covers er (with and without skip), uir with start+mid dw (stride on mid), start dw only, mid dw only, "
            "neither (pw only), mqa with kv_stride 2 and mqa without kv stride; layer scale present. "
            "LFM2 [conv, attn, conv, attn], GQA 4 heads / 2 kv heads, tied embeddings; connector gelu (erf). float32."
        ),
        seed=1001,
        vision=VISION_ALL_BLOCKS,
        layer_scale=True,
        text=dict(hidden_size=32, intermediate_size=96, block_multiple_of=32, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, layer_types=lfm2_layout(4, [1, 3]),
                  tie_word_embeddings=True, max_position_embeddings=128000),
        projector_hidden_size=48,
        projector_hidden_act="gelu",
        dtype="float32",
        shards=1,
        num_images=1,
        user_text=USER_TEXT_SHORT,
        max_new_tokens=16,
        emb_std=0.5,
        save_stages=True,
    ),
    dict(
        name="vision_512_pool",
        description=(
            "512x512 input, MSFA: stage-2 32x32 + stage-3 16x16 upsampled, then 2x2 avg-pool to 16x16. "
            "uir with stride on the START dw (a3_k0_s2, no mid dw), mqa with kv_stride 2 in stages 2 and 3, mqa "
            "without stride; layer scale present. LFM2 [attn, conv, conv, conv], MHA (4 heads / 4 kv heads), "
            "UNTIED lm_head, norm_eps 1e-6; connector gelu_pytorch_tanh. Weights stored as bfloat16."
        ),
        seed=2002,
        vision=VISION_512,
        layer_scale=True,
        text=dict(hidden_size=32, intermediate_size=96, block_multiple_of=32, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, layer_types=lfm2_layout(4, [0]),
                  tie_word_embeddings=False, norm_eps=1e-6),
        projector_hidden_size=64,
        projector_hidden_act="gelu_pytorch_tanh",
        dtype="bfloat16",
        shards=1,
        num_images=1,
        user_text=USER_TEXT_SHORT,
        max_new_tokens=16,
        emb_std=0.5,
    ),
    dict(
        name="two_images_r8",
        description=(
            "Two 256x256 images, msfa_output_resolution 8 with msfa_indices [-3, -1]: stage-1 32x32 + stage-3 8x8 "
            "nearest-upsampled x4, then 4x4 avg-pool to 8x8 (64 tokens per image). NO layer scale (no gamma tensors). "
            "LFM2 [conv, conv, attn, conv, conv, conv] (all conv except one), GQA 4 heads / 1 kv head, "
            "block_auto_adjust_ff_dim false; connector gelu. Weights stored as float16."
        ),
        seed=3003,
        vision=VISION_R8,
        layer_scale=False,
        text=dict(hidden_size=32, intermediate_size=80, block_auto_adjust_ff_dim=False, num_hidden_layers=6,
                  num_attention_heads=4, num_key_value_heads=1, layer_types=lfm2_layout(6, [2]),
                  tie_word_embeddings=True),
        projector_hidden_size=40,
        projector_hidden_act="gelu",
        dtype="float16",
        shards=1,
        num_images=2,
        user_text=USER_TEXT_TWO,
        max_new_tokens=20,
        emb_std=0.5,
    ),
    dict(
        name="real_layout_scaled",
        description=(
            "The real mobilenetv5_300m_enc arch_def (all 84 blocks, copied from timm _gen_mobilenet_v5) with "
            "channels scaled 128/256/640/1280 -> 8/16/16/32, stem 64 -> 8, MQA h12 d64 v2 -> h4 d8 v2 and "
            "h16 d96 -> h4 d8, num_features 2048 -> 64, at 256x256 (no MSFA pool). LFM2-1.2B layer layout "
            "(16 layers, attention at 2,5,8,10,12,14) scaled to hidden 32, 4 heads / 1 kv head; connector gelu. "
            "Weights stored as bfloat16."
        ),
        seed=4004,
        vision="real_layout_scaled",
        layer_scale=True,
        text=dict(hidden_size=32, intermediate_size=96, block_multiple_of=32, num_hidden_layers=16,
                  num_attention_heads=4, num_key_value_heads=1,
                  layer_types=lfm2_layout(16, [2, 5, 8, 10, 12, 14]), tie_word_embeddings=True,
                  max_position_embeddings=128000),
        projector_hidden_size=64,
        projector_hidden_act="gelu",
        dtype="bfloat16",
        shards=1,
        num_images=1,
        user_text=USER_TEXT_SHORT,
        max_new_tokens=16,
        emb_std=0.5,
    ),
    dict(
        name="text_one_token",
        description=(
            "Text-only, a 1-token prompt (<|startoftext|> only): prefill of a single token through conv and "
            "attention layers, then decode. LFM2 [conv, conv, attn], GQA 4 heads / 2 kv heads, ff width "
            "int(2*100/3)=66 rounded up to block_multiple_of 32 -> 96. Tiny vision tower present but unused; connector gelu_pytorch_tanh. "
            "float32."
        ),
        seed=5005,
        vision=TINY_VISION,
        layer_scale=True,
        text=dict(hidden_size=32, intermediate_size=100, block_multiple_of=32, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, layer_types=lfm2_layout(3, [2]),
                  tie_word_embeddings=True),
        projector_hidden_size=32,
        projector_hidden_act="gelu_pytorch_tanh",
        dtype="float32",
        shards=1,
        num_images=0,
        raw_prompt="<|startoftext|>",
        max_new_tokens=16,
        emb_std=0.3,
    ),
    dict(
        name="text_long_prompt",
        description=(
            "Text-only chat prompt of ~200 tokens. text_config written with the OLD LFM2 keys (full_attn_idxs, "
            "block_ff_dim, tie_embedding, rope_theta, block_dim, conv_dim, ...). rope_theta 10000. "
            "LFM2 [conv, attn, conv, conv, attn, conv], GQA 2 heads / 1 kv head (head_dim 16), UNTIED lm_head. "
            "Weights SHARDED into model-00001-of-00002.safetensors + model-00002-of-00002.safetensors with "
            "model.safetensors.index.json. float32."
        ),
        seed=6006,
        vision=TINY_VISION,
        layer_scale=True,
        text=dict(hidden_size=32, intermediate_size=96, block_multiple_of=16, num_hidden_layers=6,
                  num_attention_heads=2, num_key_value_heads=1, layer_types=lfm2_layout(6, [1, 4]),
                  tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        old_text_keys=True,
        projector_hidden_size=32,
        projector_hidden_act="gelu",
        dtype="float32",
        shards=2,
        num_images=0,
        long_prompt_tokens=200,
        max_new_tokens=24,
        emb_std=0.5,
    ),
    dict(
        name="lfm2_plain_text",
        description=(
            "A PLAIN LFM2 checkpoint directory: exactly what Lfm2ForCausalLM.save_pretrained writes "
            "(full config.json incl. dtype bfloat16, layer_types and full_attn_idxs null, generation_config.json, "
            "model.safetensors with model.* keys, no lm_head because embeddings are tied) + tokenizer.json. "
            "LFM2 [attn, conv, attn, conv], GQA 4 heads / 2 kv heads, default ff formula (block_multiple_of 256: "
            "intermediate_size 384 -> 256). Weights stored as bfloat16."
        ),
        seed=7007,
        plain_lfm2=True,
        text=dict(hidden_size=32, intermediate_size=384, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, layer_types=lfm2_layout(4, [0, 2]),
                  tie_word_embeddings=True),
        dtype="bfloat16",
        num_images=0,
        user_text="Tell me about the weather in the town.",
        max_new_tokens=16,
        emb_std=0.5,
    ),
]

# InternVL baseline (InternVLForConditionalGeneration with a LlamaConfig text model) and plain Llama cases.
# Kept out of CASES: they are listed under "baseline_cases" in tests/golden/manifest.json. Model directories are exactly what save_pretrained writes
# (+ tokenizer.json / tokenizer_config.json), except for the key-layout rewrite of internvl_rms_qknorm_p14.
INTERNVL_CASES = [
    dict(
        name="internvl_layernorm_p8",
        kind="internvl",
        description=(
            "InternVLForConditionalGeneration as written by save_pretrained (transformers 5.24 key layout "
            "language_model.model.*, language_model.lm_head.weight, vision_tower.*, multi_modal_projector.*). "
            "Vision: 64x64 image, patch 8 (8x8 grid + CLS), hidden 32, 2 layers, 4 heads, MLP 64 (exact GELU), "
            "norm_type layer_norm (eps 1e-6), attention_bias true, no q/k norm, random layer scale "
            "lambda_1/lambda_2 in [0.5, 1.5), use_mean_pooling true (final layernorm Identity). Pixel shuffle "
            "0.5 -> 16 tokens of width 128; projector LayerNorm(128, eps 1e-5) -> Linear -> GELU (erf) -> Linear. "
            "Llama: hidden 64, 3 layers, GQA 4 heads / 2 kv heads, head_dim 16, SwiGLU 128, UNTIED lm_head. "
            "One image. float32."
        ),
        seed=8008,
        vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    image_size=64, patch_size=8, norm_type="layer_norm", attention_bias=True, use_qk_norm=False,
                    use_mean_pooling=True),
        lambda_mode="random",
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
        key_layout="save_pretrained",
        dtype="float32",
        num_images=1,
        user_text=USER_TEXT_SHORT,
        max_new_tokens=16,
        emb_std=0.5,
    ),
    dict(
        name="internvl_rms_qknorm_p14",
        kind="internvl",
        description=(
            "InternVL with its tensors REWRITTEN from the save_pretrained layout into the Hub '-hf' layout "
            "(model.language_model.*, model.vision_tower.*, model.multi_modal_projector.*; no lm_head tensor "
            "since tied); the generator checks that InternVLForConditionalGeneration.from_pretrained loads it with "
            "no missing/unexpected keys and gives bit-identical float64 logits to the save_pretrained layout. "
            "Vision: 56x56 images, patch 14 (4x4 grid + CLS), hidden 32, 2 layers, 4 heads, MLP 64, "
            "norm_type rms_norm (no bias), use_qk_norm true (RMSNorm over the full 32-wide q/k, eps 1e-6), "
            "attention_bias false, random layer scale, use_mean_pooling false (final nn.LayerNorm WITH bias, "
            "eps 1e-6). Pixel shuffle -> 4 tokens per image. Llama: hidden 64, 2 layers, MHA 4 heads / 4 kv heads, "
            "head_dim 16, SwiGLU 128, rms_norm_eps 1e-5, TIED embeddings. TWO images. Weights stored as float16."
        ),
        seed=9009,
        vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    image_size=56, patch_size=14, norm_type="rms_norm", attention_bias=False, use_qk_norm=True,
                    use_mean_pooling=False),
        lambda_mode="random",
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=True),
        key_layout="hf",
        dtype="float16",
        num_images=2,
        user_text=USER_TEXT_TWO,
        max_new_tokens=20,
        emb_std=0.15,  # tied embeddings: a larger std makes the untrained model repeat its input token
    ),
    dict(
        name="internvl_no_layer_scale_p16",
        kind="internvl",
        description=(
            "InternVL (save_pretrained key layout). transformers always creates lambda_1/lambda_2 (no config switch "
            "drops them), so 'no layer scale' is layer_scale_init_value 1.0 with every lambda exactly 1.0. "
            "Vision: 96x96 image, patch 16 (6x6 grid + CLS), hidden 48, 3 layers, 3 heads (head_dim 16), MLP 192, "
            "layer_norm, attention_bias true, use_mean_pooling true. Pixel shuffle -> 9 tokens (3x3) of width 192. "
            "Llama: hidden 64, 3 layers, 4 heads / 1 kv head (MQA), head_dim 16, SwiGLU 160, rope_theta 500000, "
            "rms_norm_eps 1e-5, UNTIED lm_head. One image, chat prompt of more than 200 tokens. float32."
        ),
        seed=10010,
        vision=dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=192,
                    image_size=96, patch_size=16, norm_type="layer_norm", attention_bias=True, use_qk_norm=False,
                    use_mean_pooling=True, layer_scale_init_value=1.0),
        lambda_mode="one",
        text=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, tie_word_embeddings=False),
        key_layout="save_pretrained",
        dtype="float32",
        num_images=1,
        min_prompt_tokens=200,
        max_new_tokens=16,
        emb_std=0.5,
    ),
    dict(
        name="llama_plain_text",
        kind="llama",
        description=(
            "A PLAIN Llama checkpoint directory: exactly what LlamaForCausalLM.save_pretrained writes (config.json "
            "model_type llama, generation_config.json, model.safetensors with model.* keys + lm_head.weight) + "
            "tokenizer.json. Llama: hidden 48, 3 layers, GQA 4 heads / 2 kv heads with head_dim 16, i.e. "
            "num_heads * head_dim = 64 != hidden_size 48 (q_proj 48->64, o_proj 64->48), SwiGLU 128, "
            "attention_bias false, rope_theta 10000, UNTIED lm_head. Text-only chat prompt of more than 300 tokens. "
            "Weights stored as float16."
        ),
        seed=11011,
        text=dict(hidden_size=48, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, attention_bias=False, tie_word_embeddings=False),
        dtype="float16",
        num_images=0,
        min_prompt_tokens=300,
        max_new_tokens=24,
        emb_std=0.5,
    ),
]

MIN_REL_MARGIN = 2e-3  # top1 - top2 must exceed this fraction of max|logit| at every greedy step
MIN_DISTINCT_GENERATED = 6  # avoid degenerate single-token loops so decoding is actually exercised
MAX_SEED_TRIES = 50


def greedy_ok(seed: int, gen: list[int], min_rel: float) -> bool:
    if min_rel <= MIN_REL_MARGIN:
        print(f"  seed {seed}: min relative greedy margin {min_rel:.2e} too small, retrying", flush=True)
        return False
    if len(set(gen)) < MIN_DISTINCT_GENERATED:
        print(f"  seed {seed}: only {len(set(gen))} distinct generated tokens, retrying", flush=True)
        return False
    return True


def save_npy(path: Path, arr) -> None:
    a = np.ascontiguousarray(np.asarray(arr, dtype="<f4"))
    np.save(path, a, allow_pickle=False)


def prompt_for_case(case: dict, tk: TokenizerBundle, tokens_per_image: int) -> tuple[str, str | None]:
    if "raw_prompt" in case:
        return case["raw_prompt"], None
    if "long_prompt_tokens" in case:
        user = long_user_text(tk, case["long_prompt_tokens"])
        return chat_prompt(user, 0, 0), user
    return chat_prompt(case["user_text"], case["num_images"], tokens_per_image), case["user_text"]


# Largest accepted logits change (relative to max |logit|) for a 1e-6 relative perturbation of the
# image embeddings. Random deep LFM2 stacks can amplify input noise 100x; such a case would make a
# 1e-4 float32 parity bound test the conditioning of the random weights rather than the code.
MAX_SENSITIVITY = 3e-5


def try_seed_autoneural(case: dict, seed: int, tk: TokenizerBundle, work: Path):
    """Build, write to `work/model`, reload and compute. Returns the result dict or None if margins fail."""
    set_all_seeds(seed)
    g = torch.Generator().manual_seed(seed)
    vcfg = real_layout_scaled_vision() if case["vision"] == "real_layout_scaled" else dict(case["vision"])
    dtype = STORAGE_DTYPES[case["dtype"]]

    enc = build_vision_encoder(vcfg, layer_scale=case["layer_scale"])
    randomize_vision(enc, g)
    tcfg = make_lm_config(case["text"])
    lm = Lfm2ForCausalLM(tcfg).eval()
    randomize_lm(lm, g, case["emb_std"])
    proj = Projector(vcfg["num_features"], case["projector_hidden_size"], tcfg.hidden_size, case["projector_hidden_act"])
    randomize_projector(proj, g)
    for m in (enc, lm, proj):
        round_module_(m, dtype)

    S = vcfg["image_size"]
    pixels = torch.rand((case["num_images"], 3, S, S), generator=g)
    if case["num_images"]:
        verify_msfa_equivalence(enc, vcfg, pixels[:1], case["layer_scale"])

    # ---- write the model directory
    model_dir = work / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    text_cfg = tcfg.to_dict()
    if case.get("old_text_keys"):
        text_cfg = to_old_lfm2_keys(text_cfg)
        # the old keys must describe the very same model
        back = Lfm2Config.from_dict(text_cfg)
        assert back.layer_types == tcfg.layer_types
        assert back.intermediate_size == tcfg.intermediate_size
        assert back.tie_word_embeddings == tcfg.tie_word_embeddings
        assert back.rope_parameters["rope_theta"] == tcfg.rope_parameters["rope_theta"]
    config = {
        "model_type": "autoneural",
        "vision_config": vcfg,
        "text_config": text_cfg,
        "projector_hidden_size": case["projector_hidden_size"],
        "projector_hidden_act": case["projector_hidden_act"],
        "image_token_id": IMAGE_TOKEN_ID,
        "image_start_token_id": IMAGE_START_TOKEN_ID,
        "image_end_token_id": IMAGE_END_TOKEN_ID,
    }
    json_dump(config, model_dir / "config.json")
    write_safetensors(autoneural_state_dict(enc, proj, lm), model_dir, dtype, case["shards"])
    tk.write(model_dir)

    # ---- reload from disk and compute the goldens from the reloaded model
    _, enc2, proj2, lm2 = load_autoneural_dir(model_dir, case["layer_scale"])
    for a, b in zip(list(enc.state_dict().values()) + list(proj.state_dict().values()) + list(lm.state_dict().values()),
                    list(enc2.state_dict().values()) + list(proj2.state_dict().values()) + list(lm2.state_dict().values())):
        assert torch.equal(a, b)

    R = vcfg["msfa_output_resolution"]
    tokens_per_image = R * R
    prompt_text, user_text = prompt_for_case(case, tk, tokens_per_image)
    prompt_ids = tk.encode(prompt_text)
    assert prompt_ids.count(IMAGE_TOKEN_ID) == case["num_images"] * tokens_per_image
    assert prompt_ids.count(IMAGE_START_TOKEN_ID) == case["num_images"]

    # Goldens are evaluated in float64 with the reference modules (the stored weights are exactly
    # representable), so they are the exact math to ~1e-15 and the Rust float32 path is measured
    # against the truth rather than against another float32 evaluation with its own rounding.
    enc2, proj2, lm2 = enc2.double(), proj2.double(), lm2.double()
    pixels = pixels.double()
    with torch.no_grad():
        if case["num_images"]:
            feats, img_emb = image_features(enc2, proj2, pixels)
            assert feats.shape == (case["num_images"] * tokens_per_image, vcfg["num_features"])
            # batch-independence check: per-image forward gives the same tokens
            per = torch.cat([image_features(enc2, proj2, pixels[i:i + 1])[0] for i in range(case["num_images"])])
            assert torch.allclose(per, feats, atol=1e-5, rtol=1e-5)
        else:
            feats, img_emb = None, None
        emb = build_inputs_embeds(lm2, prompt_ids, img_emb)
        logits = lm2(inputs_embeds=emb, use_cache=False).logits[0]
    gen, min_rel, min_abs = greedy_reference(lm2, emb, case["max_new_tokens"])
    sensitivity = None
    if img_emb is not None:
        # Conditioning: how much a 1e-6 (relative to max) perturbation of the image embeddings moves
        # the logits. A 1e-4 parity bound is only meaningful where this stays well below it.
        with torch.no_grad():
            gpert = torch.Generator().manual_seed(0)
            noise = (2 * torch.rand(img_emb.shape, generator=gpert, dtype=img_emb.dtype) - 1) * 1e-6 * img_emb.abs().max()
            pert = lm2(inputs_embeds=build_inputs_embeds(lm2, prompt_ids, img_emb + noise), use_cache=False).logits[0]
            sensitivity = float((pert - logits).abs().max() / logits.abs().max())
    stats = {
        "logits_change_per_1e-6_embedding_noise": sensitivity,
        "feature_std": None if feats is None else float(feats.std()),
        "image_embedding_std": None if img_emb is None else float(img_emb.std()),
        "logits_std": float(logits.std()),
        "distinct_generated": len(set(gen)),
    }
    if not greedy_ok(seed, gen, min_rel):
        return None
    if sensitivity is not None and sensitivity > MAX_SENSITIVITY:
        print(f"  seed {seed}: logits move {sensitivity:.2e} per 1e-6 embedding noise (ill-conditioned), retrying")
        return None
    stages = None
    if case.get("save_stages") and case["num_images"]:
        stages = []
        with torch.no_grad():
            x = enc2.conv_stem(pixels[:1])
            for si, stage in enumerate(enc2.blocks):
                x = stage(x)
                if si >= 1:  # stage 0 (64x64) left out to save space
                    stages.append((si, x[0].clone()))
    return dict(
        vcfg=vcfg, pixels=pixels, feats=feats, img_emb=img_emb, logits=logits, prompt_text=prompt_text,
        user_text=user_text, prompt_ids=prompt_ids, gen=gen, min_rel=min_rel, min_abs=min_abs, seed=seed,
        tokens_per_image=tokens_per_image if case["num_images"] else 0, stats=stats, stages=stages,
    )


def try_seed_plain(case: dict, seed: int, tk: TokenizerBundle, work: Path):
    set_all_seeds(seed)
    g = torch.Generator().manual_seed(seed)
    dtype = STORAGE_DTYPES[case["dtype"]]
    tcfg = make_lm_config(case["text"])
    lm = Lfm2ForCausalLM(tcfg).eval()
    randomize_lm(lm, g, case["emb_std"])
    model_dir = work / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    lm.to(dtype).save_pretrained(str(model_dir))
    tk.write(model_dir)
    lm2 = Lfm2ForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    sd = load_file(str(model_dir / "model.safetensors"))
    assert all(v.dtype == dtype for v in sd.values())
    assert "lm_head.weight" not in sd
    for k, v in lm2.state_dict().items():
        src = "model.embed_tokens.weight" if k == "lm_head.weight" else k
        assert torch.equal(v, sd[src].to(torch.float32)), k
    prompt_text, user_text = prompt_for_case(case, tk, 0)
    prompt_ids = tk.encode(prompt_text)
    lm2 = lm2.double()  # float64 goldens, as for the autoneural cases
    with torch.no_grad():
        emb = build_inputs_embeds(lm2, prompt_ids, None)
        logits = lm2(inputs_embeds=emb, use_cache=False).logits[0]
        logits_ids = lm2(input_ids=torch.tensor([prompt_ids]), use_cache=False).logits[0]
        assert torch.equal(logits, logits_ids)
    gen, min_rel, min_abs = greedy_reference(lm2, emb, case["max_new_tokens"])
    if not greedy_ok(seed, gen, min_rel):
        return None
    return dict(
        vcfg=None, pixels=None, feats=None, img_emb=None, logits=logits, prompt_text=prompt_text,
        user_text=user_text, prompt_ids=prompt_ids, gen=gen, min_rel=min_rel, min_abs=min_abs, seed=seed,
        tokens_per_image=0, stats={"logits_std": float(logits.std()), "distinct_generated": len(set(gen))},
        stages=None,
    )


# --------------------------------------------------------------------------------------------------
# InternVL baseline (transformers InternVLForConditionalGeneration + LlamaConfig) and plain Llama
# --------------------------------------------------------------------------------------------------
#
# Reference-code notes (transformers 5.24.0, models/internvl/modeling_internvl.py, models/llama/):
#  * save_pretrained of InternVLForConditionalGeneration writes the LEGACY llava-style tensor names
#    (it reverts the "llava" conversion mapping on save): language_model.model.*,
#    language_model.lm_head.weight (only when untied), vision_tower.*, multi_modal_projector.*.
#    In memory (state_dict()) the names are model.language_model.*, model.vision_tower.*,
#    model.multi_modal_projector.*, lm_head.weight (the Hub "-hf" layout); from_pretrained accepts both.
#  * InternVLVisionLayer ALWAYS creates lambda_1 / lambda_2 (nn.Parameter(layer_scale_init_value *
#    ones(hidden))); the config has no switch to drop them (layer_scale_init_value is a float).
#  * Embeddings: Conv2d(k=stride=patch, bias) -> flatten row-major -> prepend cls_token -> add
#    position_embeddings [1, 1 + (S/p)^2, D]. Only when the patch count differs from the table (or the
#    image is not square) are the patch position embeddings bicubically resized (align_corners False,
#    the CLS row kept); at the config image size there is no interpolation.
#  * Layer: h += lambda_1 * attn(norm_before(h)); h += lambda_2 * mlp(norm_after(h)); norm is nn.LayerNorm
#    (with bias) or InternVLVisionRMSNorm (no bias), both with eps layer_norm_eps (default 1e-6).
#    q_norm / k_norm are InternVLVisionRMSNorm over the FULL hidden width (not per head), applied to the
#    q/k projections before the head split, eps fixed at 1e-6 (not layer_norm_eps). Attention scale
#    head_dim^-0.5, no mask, softmax over CLS + patches. projection_layer always has a bias.
#  * The final vision `layernorm` is nn.LayerNorm(hidden, eps=layer_norm_eps) WITH bias whenever
#    use_mean_pooling is false, even for norm_type rms_norm; Identity when use_mean_pooling is true.
#  * vision hidden_act "gelu" and projector_hidden_act "gelu" are the exact (erf) GELU.
#  * Projector layer_norm is nn.LayerNorm(4 * vision_hidden) with the torch default eps 1e-5.
#  * pixel shuffle (downsample_ratio 0.5): with x[r, c, :] the CLS-free last hidden state on the
#    G x G patch grid (token = r * G + c), output token i * (G/2) + j has channel block
#    k = 2 * dy + dx (dy, dx in {0, 1}) equal to x[2i + dy, 2j + dx, :], i.e. blocks
#    (0,0), (0,1), (1,0), (1,1) = top-left, top-right, bottom-left, bottom-right.

KEY_LAYOUT_SAVE_PRETRAINED = {
    "name": "save_pretrained",
    "language_model": "language_model.model.",
    "lm_head": "language_model.lm_head.weight",
    "vision_tower": "vision_tower.",
    "multi_modal_projector": "multi_modal_projector.",
}
KEY_LAYOUT_HF = {
    "name": "hf",
    "language_model": "model.language_model.",
    "lm_head": "lm_head.weight",
    "vision_tower": "model.vision_tower.",
    "multi_modal_projector": "model.multi_modal_projector.",
}
KEY_LAYOUT_LLAMA = {"name": "llama", "language_model": "model.", "lm_head": "lm_head.weight"}
KEY_LAYOUTS = {"save_pretrained": KEY_LAYOUT_SAVE_PRETRAINED, "hf": KEY_LAYOUT_HF}
INTERNVL_PARTS = ("vision_tower", "multi_modal_projector", "language_model")


def key_layout_for(layout: dict, tied: bool) -> dict:
    out = dict(layout)
    if tied:
        out["lm_head"] = None  # tied: no lm_head tensor on disk, the head is language_model embed_tokens
    return out


def map_key_layout(key: str, src: dict, dst: dict) -> str:
    if src["lm_head"] is not None and key == src["lm_head"]:
        return dst["lm_head"]
    for part in INTERNVL_PARTS:
        if key.startswith(src[part]):
            return dst[part] + key[len(src[part]):]
    raise AssertionError(f"{key} is not in layout {src['name']}")


def make_llama_config(t: dict) -> LlamaConfig:
    kw = dict(t)
    kw.setdefault("vocab_size", VOCAB_SIZE)
    kw.setdefault("bos_token_id", BOS_ID)
    kw.setdefault("eos_token_id", EOS_ID)
    kw.setdefault("pad_token_id", PAD_ID)
    return LlamaConfig(**kw)


def make_internvl_config(case: dict) -> tuple[InternVLConfig, int]:
    vcfg = InternVLVisionConfig(**case["vision"])
    tcfg = make_llama_config(case["text"])
    S, p = vcfg.image_size[0], vcfg.patch_size[0]
    assert vcfg.image_size[0] == vcfg.image_size[1] and vcfg.patch_size[0] == vcfg.patch_size[1]
    assert S % p == 0 and (S // p) % 2 == 0, "pixel shuffle 0.5 needs an even patch grid"
    tokens_per_image = (S // p // 2) ** 2
    cfg = InternVLConfig(
        vision_config=vcfg,
        text_config=tcfg,
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=tokens_per_image,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tcfg.tie_word_embeddings,
        # extra keys for the Rust side (not InternVLConfig fields; kept in config.json by save_pretrained)
        image_start_token_id=IMAGE_START_TOKEN_ID,
        image_end_token_id=IMAGE_END_TOKEN_ID,
    )
    return cfg, tokens_per_image


def randomize_internvl(model: InternVLForConditionalGeneration, g: torch.Generator, emb_std: float,
                       lambda_mode: str) -> None:
    tied = model.config.tie_word_embeddings
    H = model.config.text_config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "model.language_model.embed_tokens.weight":
                p.copy_(emb_std * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                assert not tied
                p.copy_(torch.randn(p.shape, generator=g) * (2.5 / math.sqrt(H)))
            elif name.endswith((".lambda_1", ".lambda_2")):
                if lambda_mode == "random":
                    p.copy_(0.5 + torch.rand(p.shape, generator=g))
                else:
                    assert lambda_mode == "one", lambda_mode
                    p.fill_(1.0)
            elif name.endswith(("embeddings.cls_token", "embeddings.position_embeddings")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                assert name.endswith(("norm.weight", "layernorm_before.weight", "layernorm_after.weight")), name
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 4:
                assert name.endswith("patch_embeddings.projection.weight"), name
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif p.ndim == 2:
                gain = 1.0
                if name.startswith("model.vision_tower.") and name.endswith(("q_proj.weight", "k_proj.weight")):
                    gain = 1.5  # peakier attention over the patches so the vision attention matters
                p.copy_(torch.randn(p.shape, generator=g) * (gain / math.sqrt(p.shape[1])))
            else:
                raise AssertionError(f"unexpected InternVL parameter {name} {tuple(p.shape)}")
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def load_with_check(cls, model_dir: Path):
    """from_pretrained in float32 with no missing / unexpected / mismatched keys."""
    model, info = cls.from_pretrained(str(model_dir), dtype=torch.float32, output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[k], (k, info[k])
    return model.eval()


@torch.no_grad()
def internvl_image_features(model: InternVLForConditionalGeneration, pixels: torch.Tensor):
    """pixels [N,3,S,S] -> (projector input [N*T, 4*D], image embeddings [N*T, H]), written out explicitly
    and checked against InternVLModel.pixel_shuffle."""
    hs = model.model.vision_tower(pixel_values=pixels).last_hidden_state  # [N, 1 + G*G, D]
    n, L, D = hs.shape
    G = math.isqrt(L - 1)
    assert G * G == L - 1 and G % 2 == 0
    x = hs[:, 1:, :].reshape(n, G, G, D)  # drop CLS; [image, row, col, D], token = row*G + col
    blocks = [x[:, dy::2, dx::2, :] for dy in (0, 1) for dx in (0, 1)]  # channel block k = 2*dy + dx
    shuffled = torch.cat(blocks, dim=-1)  # [N, G/2, G/2, 4D]
    ref = model.model.pixel_shuffle(x, scale_factor=model.config.downsample_ratio)
    assert torch.equal(shuffled, ref)
    feats = shuffled.reshape(n * (G // 2) ** 2, 4 * D)
    return feats, model.model.multi_modal_projector(feats)


def long_user_text_over(tk: TokenizerBundle, num_images: int, tokens_per_image: int, min_tokens: int) -> str:
    """Shortest run of LONG_SENTENCES whose chat prompt is longer than min_tokens."""
    text = ""
    i = 0
    while len(tk.encode(chat_prompt(text, num_images, tokens_per_image))) <= min_tokens:
        text = (text + " " if text else "") + LONG_SENTENCES[i % len(LONG_SENTENCES)]
        i += 1
    return text


def prompt_for_new_case(case: dict, tk: TokenizerBundle, tokens_per_image: int) -> tuple[str, str]:
    n = case["num_images"]
    if "min_prompt_tokens" in case:
        user = long_user_text_over(tk, n, tokens_per_image, case["min_prompt_tokens"])
    else:
        user = case["user_text"]
    return chat_prompt(user, n, tokens_per_image), user


def try_seed_internvl(case: dict, seed: int, tk: TokenizerBundle, work: Path):
    set_all_seeds(seed)
    g = torch.Generator().manual_seed(seed)
    dtype = STORAGE_DTYPES[case["dtype"]]
    cfg, tokens_per_image = make_internvl_config(case)
    tied = cfg.tie_word_embeddings
    model = InternVLForConditionalGeneration(cfg).eval()
    randomize_internvl(model, g, case["emb_std"], case["lambda_mode"])
    round_module_(model, dtype)
    ref_sd = {k: v.clone() for k, v in model.state_dict().items()}  # in-memory (hf) names, float32
    S = cfg.vision_config.image_size[0]
    n_img = case["num_images"]
    pixels = torch.rand((n_img, 3, S, S), generator=g)

    # ---- write the model directory: exactly what save_pretrained writes (+ the tokenizer)
    model_dir = work / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    model.to(dtype).save_pretrained(str(model_dir))
    tk.write(model_dir)
    disk_cfg = json.loads((model_dir / "config.json").read_text())
    assert disk_cfg["model_type"] == "internvl" and disk_cfg["text_config"]["model_type"] == "llama"
    assert disk_cfg["image_token_id"] == IMAGE_TOKEN_ID
    assert disk_cfg["image_start_token_id"] == IMAGE_START_TOKEN_ID
    assert disk_cfg["image_end_token_id"] == IMAGE_END_TOKEN_ID
    written = load_file(str(model_dir / "model.safetensors"))
    assert all(v.dtype == dtype for v in written.values())
    saved_layout = key_layout_for(KEY_LAYOUT_SAVE_PRETRAINED, tied)
    hf_layout = key_layout_for(KEY_LAYOUT_HF, tied)
    expected = {k for k in ref_sd if not (tied and k == "lm_head.weight")}
    assert {map_key_layout(k, saved_layout, hf_layout) for k in written} == expected
    for k, v in written.items():
        assert torch.equal(v.to(torch.float32), ref_sd[map_key_layout(k, saved_layout, hf_layout)]), k

    layout = saved_layout
    m_saved = None
    if case["key_layout"] == "hf":
        # rewrite into the other (Hub "-hf") layout; transformers must load it to the very same model
        m_saved = load_with_check(InternVLForConditionalGeneration, model_dir)
        save_file({map_key_layout(k, saved_layout, hf_layout): v for k, v in written.items()},
                  str(model_dir / "model.safetensors"), metadata={"format": "pt"})
        layout = hf_layout
        assert set(load_file(str(model_dir / "model.safetensors"))) == expected
    else:
        assert case["key_layout"] == "save_pretrained"

    # ---- reload from disk and compute the goldens (float64) from the reloaded model
    m = load_with_check(InternVLForConditionalGeneration, model_dir)
    sd2 = m.state_dict()
    assert set(sd2) == set(ref_sd)
    for k, v in ref_sd.items():
        assert torch.equal(sd2[k], v), k
    assert getattr(m.config, "image_start_token_id") == IMAGE_START_TOKEN_ID

    prompt_text, user_text = prompt_for_new_case(case, tk, tokens_per_image)
    prompt_ids = tk.encode(prompt_text)
    assert prompt_ids.count(IMAGE_TOKEN_ID) == n_img * tokens_per_image
    assert prompt_ids.count(IMAGE_START_TOKEN_ID) == n_img and prompt_ids.count(IMAGE_END_TOKEN_ID) == n_img
    if "min_prompt_tokens" in case:
        assert len(prompt_ids) > case["min_prompt_tokens"]

    m = m.double()
    pixels = pixels.double()
    ids = torch.tensor([prompt_ids])
    Ht = cfg.text_config.hidden_size
    with torch.no_grad():
        feats, img_emb = internvl_image_features(m, pixels)
        assert feats.shape == (n_img * tokens_per_image, 4 * cfg.vision_config.hidden_size)
        ref_emb = m.model.get_image_features(pixel_values=pixels).pooler_output
        assert ref_emb.shape == (n_img, tokens_per_image, Ht)
        assert torch.equal(ref_emb.reshape(-1, Ht), img_emb)
        per = torch.cat([internvl_image_features(m, pixels[i:i + 1])[0] for i in range(n_img)])
        assert torch.allclose(per, feats, atol=1e-12, rtol=1e-12)
        emb = build_inputs_embeds(m, prompt_ids, img_emb)
        logits = m(inputs_embeds=emb, use_cache=False).logits[0]
        # the model's own multimodal path (input_ids + pixel_values) gives the same logits
        logits_mm = m(input_ids=ids, pixel_values=pixels, use_cache=False).logits[0]
        assert torch.allclose(logits_mm, logits, atol=1e-12, rtol=0), (logits_mm - logits).abs().max()
        if m_saved is not None:
            m_saved = m_saved.double()
            logits_saved = m_saved(input_ids=ids, pixel_values=pixels, use_cache=False).logits[0]
            assert torch.equal(logits_saved, logits_mm), "key-layout rewrite changed the logits"
            del m_saved
    gen, min_rel, min_abs = greedy_reference(m, emb, case["max_new_tokens"])
    # cross-check: the multimodal generate() path (input_ids + pixel_values) produces the same tokens
    with torch.no_grad():
        out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                         generation_config=GenerationConfig(do_sample=False, max_new_tokens=case["max_new_tokens"],
                                                            min_new_tokens=0, eos_token_id=None, pad_token_id=PAD_ID,
                                                            bos_token_id=BOS_ID, num_beams=1))
    assert out[0, len(prompt_ids):].tolist() == gen, (out[0, len(prompt_ids):].tolist(), gen)
    with torch.no_grad():
        gpert = torch.Generator().manual_seed(0)
        noise = (2 * torch.rand(img_emb.shape, generator=gpert, dtype=img_emb.dtype) - 1) * 1e-6 * img_emb.abs().max()
        pert = m(inputs_embeds=build_inputs_embeds(m, prompt_ids, img_emb + noise), use_cache=False).logits[0]
        sensitivity = float((pert - logits).abs().max() / logits.abs().max())
        pnoise = (2 * torch.rand(pixels.shape, generator=gpert, dtype=pixels.dtype) - 1) * 1e-6 * pixels.abs().max()
        _, emb_p = internvl_image_features(m, pixels + pnoise)
        px_sensitivity = float((emb_p - img_emb).abs().max() / img_emb.abs().max())
    stats = {
        "logits_change_per_1e-6_embedding_noise": sensitivity,
        "image_embedding_change_per_1e-6_pixel_noise": px_sensitivity,
        "feature_std": float(feats.std()),
        "image_embedding_std": float(img_emb.std()),
        "logits_std": float(logits.std()),
        "distinct_generated": len(set(gen)),
    }
    if not greedy_ok(seed, gen, min_rel):
        return None
    if sensitivity > MAX_SENSITIVITY:
        print(f"  seed {seed}: logits move {sensitivity:.2e} per 1e-6 embedding noise (ill-conditioned), retrying")
        return None
    if px_sensitivity > MAX_SENSITIVITY:
        print(f"  seed {seed}: image embeddings move {px_sensitivity:.2e} per 1e-6 pixel noise (ill-conditioned), "
              "retrying")
        return None
    return dict(
        vcfg={"image_size": S}, pixels=pixels, feats=feats, img_emb=img_emb, logits=logits, prompt_text=prompt_text,
        user_text=user_text, prompt_ids=prompt_ids, gen=gen, min_rel=min_rel, min_abs=min_abs, seed=seed,
        tokens_per_image=tokens_per_image, stats=stats, stages=None,
        model_format="internvl", key_layout=layout,
    )


def try_seed_llama(case: dict, seed: int, tk: TokenizerBundle, work: Path):
    set_all_seeds(seed)
    g = torch.Generator().manual_seed(seed)
    dtype = STORAGE_DTYPES[case["dtype"]]
    tcfg = make_llama_config(case["text"])
    tcfg.architectures = ["LlamaForCausalLM"]
    tied = tcfg.tie_word_embeddings
    lm = LlamaForCausalLM(tcfg).eval()
    randomize_lm(lm, g, case["emb_std"])
    model_dir = work / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    lm.to(dtype).save_pretrained(str(model_dir))
    tk.write(model_dir)
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "llama"
    lm2 = load_with_check(LlamaForCausalLM, model_dir)
    sd = load_file(str(model_dir / "model.safetensors"))
    assert all(v.dtype == dtype for v in sd.values())
    assert ("lm_head.weight" in sd) == (not tied)
    assert all(k.startswith("model.") or k == "lm_head.weight" for k in sd)
    for k, v in lm2.state_dict().items():
        src = "model.embed_tokens.weight" if (tied and k == "lm_head.weight") else k
        assert torch.equal(v, sd[src].to(torch.float32)), k
    prompt_text, user_text = prompt_for_new_case(case, tk, 0)
    prompt_ids = tk.encode(prompt_text)
    if "min_prompt_tokens" in case:
        assert len(prompt_ids) > case["min_prompt_tokens"]
    lm2 = lm2.double()
    with torch.no_grad():
        emb = build_inputs_embeds(lm2, prompt_ids, None)
        logits = lm2(inputs_embeds=emb, use_cache=False).logits[0]
        logits_ids = lm2(input_ids=torch.tensor([prompt_ids]), use_cache=False).logits[0]
        assert torch.equal(logits, logits_ids)
    gen, min_rel, min_abs = greedy_reference(lm2, emb, case["max_new_tokens"])
    if not greedy_ok(seed, gen, min_rel):
        return None
    return dict(
        vcfg=None, pixels=None, feats=None, img_emb=None, logits=logits, prompt_text=prompt_text,
        user_text=user_text, prompt_ids=prompt_ids, gen=gen, min_rel=min_rel, min_abs=min_abs, seed=seed,
        tokens_per_image=0, stats={"logits_std": float(logits.std()), "distinct_generated": len(set(gen))},
        stages=None, model_format="llama", key_layout=key_layout_for(KEY_LAYOUT_LLAMA, tied),
    )


def run_case(case: dict, tk: TokenizerBundle, out_root: Path) -> dict:
    name = case["name"]
    case_dir = out_root / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    kind = case.get("kind")
    if kind == "internvl":
        fn = try_seed_internvl
    elif kind == "llama":
        fn = try_seed_llama
    else:
        fn = try_seed_plain if case.get("plain_lfm2") else try_seed_autoneural
    res = None
    for k in range(MAX_SEED_TRIES):
        res = fn(case, case["seed"] + k, tk, case_dir)
        if res is not None:
            break
    if res is None:
        raise RuntimeError(f"{name}: no seed with robust greedy margins")

    n_img = case["num_images"]
    for i in range(n_img):
        save_npy(case_dir / f"pixels_{i}.npy", res["pixels"][i].numpy())
    if n_img:
        save_npy(case_dir / "vision_features.npy", res["feats"].numpy())
        save_npy(case_dir / "image_embeddings.npy", res["img_emb"].numpy())
    save_npy(case_dir / "logits.npy", res["logits"].numpy())
    if res["stages"] is not None:
        for i, st in res["stages"]:
            save_npy(case_dir / f"stage_{i}.npy", st.numpy())

    info = {
        "description": case["description"],
        "model_format": res.get("model_format") or ("lfm2" if case.get("plain_lfm2") else "autoneural"),
    }
    if res.get("key_layout") is not None:
        info["key_layout"] = res["key_layout"]
    info |= {
        "model_dir": "model",
        "weights_dtype": case["dtype"],
        "num_shards": case.get("shards", 1),
        "seed": res["seed"],
        "num_images": n_img,
        "image_size": None if res["vcfg"] is None else res["vcfg"]["image_size"],
        "tokens_per_image": res["tokens_per_image"],
        "prompt_text": res["prompt_text"],
        "user_text": res["user_text"],
        "prompt_tokenization": "tokenizer.encode(prompt_text, add_special_tokens=False)",
        "prompt_ids": res["prompt_ids"],
        "max_new_tokens": case["max_new_tokens"],
        "ignore_eos": True,
        "generated_ids": res["gen"],
        "generated_text": tk.tok.decode(res["gen"], skip_special_tokens=False),
        "min_greedy_margin_rel": round(res["min_rel"], 6),
        "min_greedy_margin_abs": round(res["min_abs"], 6),
        "files": {
            "pixels": [f"pixels_{i}.npy" for i in range(n_img)],
            "vision_features": "vision_features.npy" if n_img else None,
            "image_embeddings": "image_embeddings.npy" if n_img else None,
            "logits": "logits.npy",
            "stages": [f"stage_{i}.npy" for i, _ in res["stages"]] if res["stages"] else [],
        },
        "stats": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res["stats"].items()},
    }
    json_dump(info, case_dir / "case.json")
    return info


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def write_readme(out_root: Path, infos: dict[str, dict]) -> None:
    lines = [
        "# Golden reference outputs",
        "",
        "Generated by `python/make_golden.py` (see `python/README.md`) from the REAL reference modules:",
        "timm `MobileNetV5Encoder` (+ MSFA), a 2-layer MLP connector, and transformers `Lfm2ForCausalLM`,",
        "with small random weights. Do not edit by hand; regenerate with",
        "",
        "```",
        "/work/.venv/bin/python python/make_golden.py",
        "```",
        "",
        "## Layout of a case directory",
        "",
        "* `model/` - the model directory the Rust loader reads:",
        "  * autoneural cases: `config.json` (`model_type: autoneural`, `vision_config`, `text_config`,",
        "    `projector_hidden_size`, `projector_hidden_act`, image token ids), `model.safetensors` (or shards +",
        "    `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`.",
        "    Tensor names: `model.vision_tower.timm_model.<timm keys>`, `model.multi_modal_projector.linear_{1,2}.{weight,bias}`,",
        "    `model.language_model.<Lfm2Model keys>`, `lm_head.weight` only when untied.",
        "  * `lfm2_plain_text`: exactly what `Lfm2ForCausalLM.save_pretrained` writes, plus the tokenizer.",
        "* `case.json` - prompt text/ids, generated ids, seeds, margins, descriptions.",
        "* `pixels_<i>.npy` - preprocessed image i, float32 [3, H, W] in [0, 1] (feed directly to the encoder).",
        "* `vision_features.npy` - encoder + MSFA output, float32 [images*R*R, num_features]; token = row*R + col,",
        "  images concatenated in order.",
        "* `image_embeddings.npy` - connector output, float32 [images*R*R, text_hidden].",
        "* `logits.npy` - float32 [prompt_len, vocab] of one full (uncached) forward over the prompt, with the",
        "  image embeddings substituted at the `<image>` (id 396) positions in order.",
        "* `stage_<s>.npy` (only `vision_all_blocks_256`, s = 1..3) - output of encoder stage s (`blocks.<s>`)",
        "  for image 0, float32 [C, H, W] (debug aid).",
        "",
        "`generated_ids` is `Lfm2ForCausalLM.generate(inputs_embeds=..., do_sample=False, max_new_tokens=N,",
        "eos_token_id=None)` (only the new tokens; generation never stops early, `ignore_eos: true`). It was",
        "cross-checked against an uncached full-recompute greedy loop. At every greedy step the top-1 minus",
        "top-2 logit margin exceeds 2e-3 * max|logit| (seeds are bumped until it does); see",
        "`min_greedy_margin_rel` / `min_greedy_margin_abs`. Generated ids may include 7 `<|im_end|>`, 2 or even",
        "396 `<image>`: during decoding every generated id is embedded with `embed_tokens` like any text token.",
        "",
        "Prompt ids are `tokenizer.encode(prompt_text, add_special_tokens=False)`; the prompt text already starts",
        "with `<|startoftext|>` (the tokenizer's post-processor would add it again with add_special_tokens=True).",
        "All references are computed in float64 by the reference modules from the stored weights (bf16/f16",
        "cases: from the rounded weights), then saved as float32: they are the exact math, not another float32",
        "evaluation with its own rounding. Image cases must also be well-conditioned: a 1e-6 relative",
        "perturbation of the image embeddings may move the logits by at most 3e-5 relative",
        "(`logits_change_per_1e-6_embedding_noise` in case.json; seeds are bumped until it holds).",
        "",
        "Tolerances used by the Rust tests (float32 compute): vision/embeddings/logits max abs diff <= 1e-4",
        "relative to the tensor's max |value|; greedy ids must match exactly.",
        "",
        "## Cases",
        "",
        "| case | images | prompt tokens | weights | size | covers |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in infos.items():
        size = dir_size(out_root / name)
        shard = f", {info['num_shards']} shards" if info["num_shards"] > 1 else ""
        img = f"{info['num_images']} x {info['image_size']}px, {info['tokens_per_image']} tok" if info["num_images"] else "0"
        lines.append(
            f"| `{name}` | {img} | {len(info['prompt_ids'])} | {info['weights_dtype']}{shard} | "
            f"{size / 1e6:.2f} MB | {info['description']} |"
        )
    total = sum(dir_size(out_root / n) for n in infos)
    lines += ["", f"Total: {total / 1e6:.2f} MB.", ""]
    lines += [
        "## Reference-code notes (timm / transformers versions in python/requirements.txt)",
        "",
        "* `MobileNetV5Encoder` hard-codes `num_features = 2048` (and the timm factory filters a `num_features`",
        "  kwarg). For the small models the MSFA module is rebuilt with the same class",
        "  (`MobileNetV5MultiScaleFusionAdapter(in_chs=msfa_in_chs, out_chs=num_features, ...)`); the script",
        "  checks bit-equality against timm's `MobileNetV5(num_features=..., num_classes=0).forward_features`.",
        "* `msfa_indices` index timm's `feature_info` (stem + one entry per stage that ends before a stride-2",
        "  stage), while `forward_features` counts stem=0, stage s = s+1. They agree only when every stage",
        "  starts with a stride-2 block (true for all cases here and for the real model).",
        "* A stage cannot end with an `mqa` block in timm (MobileAttention.feature_info references a",
        "  non-existent `conv_pw`), so every stage here ends with a uir block, as in the real arch_def.",
        "* UIR stride goes to `dw_mid` when it exists, else to `dw_start` (case `vision_512_pool` has `a3_k0_s2`).",
        "* Padding is TF 'same': stride-1 convs use symmetric (k-1)/2; stride-2 convs (stem, er conv_exp,",
        "  dw with stride, MQA kv down_conv) pad dynamically, pad_total = max((ceil(in/s)-1)*s + k - in, 0),",
        "  left/top = pad_total//2 (k3 s2 on even input: 0 before / 1 after; k5 s2: 1 / 2).",
        "* RmsNorm2d eps 1e-6 everywhere in the vision tower (incl. MQA k/v norms and the MSFA norm);",
        "  MSFA resize is nearest upsampling to the first (highest-res) input, then avg-pool when divisible",
        "  (bilinear otherwise - not exercised here); at 256 px with R=16 there is no pooling at all.",
        "* `text_config` is `Lfm2Config.to_dict()` (transformers 5.x): it carries `layer_types` AND",
        "  `full_attn_idxs: null`, `rope_parameters: {rope_theta, rope_type}` (no top-level rope_theta), plus",
        "  generic keys (id2label, dtype null, ...). `text_long_prompt` uses the old LFM2 spelling instead.",
        "* LFM2 RMSNorm eps is `norm_eps` (1e-5 default, 1e-6 in `vision_512_pool`); ff width =",
        "  block_multiple_of * ceil(int(2*ff/3) * multiplier / block_multiple_of) when block_auto_adjust_ff_dim.",
        "",
    ]
    text = "\n".join(lines)
    # Keep hand-written sections appended after the generated part (e.g. the integer-path fixtures).
    readme = out_root / "README.md"
    if readme.exists():
        old = readme.read_text(encoding="utf-8")
        for heading in README_HAND_WRITTEN_SECTIONS:
            idx = old.find("\n" + heading)
            if idx >= 0:
                text += old[idx:]
                break
    readme.write_text(text, encoding="utf-8")


# Sections of tests/golden/README.md written by hand after the generated text (kept on regeneration).
README_HAND_WRITTEN_SECTIONS = ("## Integer-path fixtures",)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", action="append", help="only (re)generate these case names")
    args = ap.parse_args()
    out_root: Path = args.out
    out_root.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}, numpy {np.__version__}")
    tk = TokenizerBundle()
    all_cases = CASES + INTERNVL_CASES
    names = [c["name"] for c in CASES]
    new_names = [c["name"] for c in INTERNVL_CASES]
    assert not set(names) & set(new_names)
    if args.only:
        unknown = set(args.only) - set(names) - set(new_names)
        if unknown:
            sys.exit(f"unknown case(s): {sorted(unknown)}")
    infos = {}
    for case in all_cases:
        if args.only and case["name"] not in args.only:
            info_path = out_root / case["name"] / "case.json"
            if info_path.exists():
                infos[case["name"]] = json.loads(info_path.read_text())
            continue
        print(f"[{case['name']}]", flush=True)
        info = run_case(case, tk, out_root)
        infos[case["name"]] = info
        print(f"  seed {info['seed']}, prompt {len(info['prompt_ids'])} tokens, generated {info['generated_ids']}, "
              f"min margin rel {info['min_greedy_margin_rel']:.3e} abs {info['min_greedy_margin_abs']:.3e}, "
              f"stats {info['stats']}, size {dir_size(out_root / case['name']) / 1e6:.2f} MB", flush=True)
    versions = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    # The baseline cases are a list of their own: the AutoNeural part tests and the integer fixtures
    # iterate "cases"; tests/baseline_golden.rs iterates "baseline_cases".
    manifest = {"generator": "python/make_golden.py", "versions": versions, "cases": names,
                "baseline_cases": [c["name"] for c in INTERNVL_CASES]}
    json_dump(manifest, out_root / "manifest.json")
    if all(n in infos for n in names):
        write_readme(out_root, {n: infos[n] for n in names})
    total = sum(dir_size(out_root / n) for n in names + new_names if (out_root / n).exists())
    print(f"total size of cases: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
