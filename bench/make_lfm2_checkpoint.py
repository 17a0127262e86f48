#!/usr/bin/env python3
"""Write a random-weight LFM2 checkpoint in Hugging Face format, for speed comparisons only.

    python bench/make_lfm2_checkpoint.py --size 1.2b --out DIR     # LFM2-1.2B shape (default)
    python bench/make_lfm2_checkpoint.py --size 350m --out DIR     # LFM2-350M shape
    python bench/make_lfm2_checkpoint.py --tiny --out DIR          # small shape for smoke tests

The shape is the real one (docs: /work/shared/research/anchors-measured.md section 2):
transformers `Lfm2Config` with vocab 65536, 16 layers, full attention at layers 2,5,8,10,12,14 and
short convolutions elsewhere (conv_L_cache 3, no conv bias), 8 KV heads, `block_auto_adjust_ff_dim`
(1.2B: intermediate_size 12288 -> FFN 8192; 350M: 6656 -> 4608), tied embeddings, rope_theta 1e6.
`Lfm2ForCausalLM(cfg)` is instantiated, every parameter with 2+ dimensions (linears, embedding,
conv taps) is drawn from N(0, 0.02) and every norm weight is set to 1; the model is saved with
`save_pretrained` as one bf16 `model.safetensors` (use --dtype to change).

The tokenizer is synthetic: a byte-level BPE `tokenizer.json` with the 8 LFM2 special tokens at ids
0-7, the 256 byte symbols, and two-byte merges up to the vocabulary size (65,272 merges for 65,536
ids). Speed benchmarks feed token ids, so the tokenizer only has to be valid and the right size.
"""

import argparse
import json
import os
import time

import torch

SPECIALS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>",
            "<|fim_suf|>", "<|im_start|>", "<|im_end|>"]

SHAPES = {
    # hidden, intermediate (before auto-adjust), heads, layers, attention layers, vocab
    "1.2b": dict(hidden_size=2048, intermediate_size=12288, num_attention_heads=32, num_hidden_layers=16,
                 attn=(2, 5, 8, 10, 12, 14), vocab_size=65536),
    "350m": dict(hidden_size=1024, intermediate_size=6656, num_attention_heads=16, num_hidden_layers=16,
                 attn=(2, 5, 8, 10, 12, 14), vocab_size=65536),
    "tiny": dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_hidden_layers=4,
                 attn=(2,), vocab_size=1024),
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer_json(vocab_size: int) -> dict:
    b2u = bytes_to_unicode()
    byte_syms = [b2u[b] for b in range(256)]
    n_merges = vocab_size - len(SPECIALS) - 256
    if n_merges < 0 or n_merges > 256 * 256:
        raise ValueError(f"vocab_size {vocab_size} does not fit 8 specials + 256 bytes + two-byte merges")
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for s in byte_syms:
        vocab[s] = len(vocab)
    # two-byte merges, printable ASCII pairs first (space + letter, letter + letter, ...)
    order = sorted(range(256), key=lambda b: (not (32 <= b < 127), b))
    merges = []
    for a in order:
        for b in order:
            if len(merges) == n_merges:
                break
            merges.append([byte_syms[a], byte_syms[b]])
            vocab[byte_syms[a] + byte_syms[b]] = len(vocab)
    assert len(vocab) == vocab_size
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, s in enumerate(SPECIALS)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["1.2b", "350m"], default="1.2b")
    ap.add_argument("--tiny", action="store_true", help="small shape (4 layers, hidden 256, vocab 1024) for smoke tests")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from transformers import Lfm2Config, Lfm2ForCausalLM
    import transformers

    shape = dict(SHAPES["tiny" if a.tiny else a.size])
    attn = shape.pop("attn")
    n_layers = shape["num_hidden_layers"]
    cfg = Lfm2Config(
        **shape,
        num_key_value_heads=8 if not a.tiny else 2,
        layer_types=["full_attention" if i in attn else "conv" for i in range(n_layers)],
        conv_L_cache=3, conv_bias=False,
        block_auto_adjust_ff_dim=True, block_multiple_of=256, block_ffn_dim_multiplier=1.0,
        tie_word_embeddings=True, norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=128000,
        bos_token_id=1, eos_token_id=7, pad_token_id=0,
    )
    t0 = time.time()
    torch.manual_seed(a.seed)
    with torch.device("cpu"):
        model = Lfm2ForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()  # (no biases in this config)
    model = model.to(getattr(torch, a.dtype))
    n_params = sum(p.numel() for p in model.parameters())
    ffn = model.model.layers[0].feed_forward.w1.weight.shape
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True, max_shard_size="100GB")
    with open(os.path.join(a.out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(cfg.vocab_size), f, ensure_ascii=False)
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[1],
                   "eos_token": SPECIALS[7], "pad_token": SPECIALS[0],
                   "model_max_length": cfg.max_position_embeddings}, f, indent=1)
    with open(os.path.join(a.out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": SPECIALS[1], "eos_token": SPECIALS[7], "pad_token": SPECIALS[0]}, f, indent=1)
    with open(os.path.join(a.out, "random-weights.json"), "w") as f:
        json.dump({"note": "random weights for speed benchmarks (bench/make_lfm2_checkpoint.py); not a trained model",
                   "shape": "tiny" if a.tiny else a.size, "seed": a.seed, "dtype": a.dtype,
                   "init": "params with ndim>=2 ~ N(0, 0.02); norm weights 1",
                   "parameters": n_params, "ffn_w1": list(ffn), "transformers": transformers.__version__,
                   "torch": torch.__version__}, f, indent=1)
    print(f"wrote {a.out}: {n_params:,} parameters, FFN w1 {tuple(ffn)}, {a.dtype}, "
          f"vocab {cfg.vocab_size}, {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
