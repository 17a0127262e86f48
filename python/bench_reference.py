#!/usr/bin/env python3
"""Time the PyTorch references on this machine, for side-by-side comparison with the Rust examples.

    python python/bench_reference.py vision [--size 768] [--runs 2]   # timm mobilenetv5_300m_enc forward
    python python/bench_reference.py lfm2 [--prompt 16] [--new 8]      # LFM2-1.2B (random) f32 decode

Compare with (same machine, same session):
    cargo run --release --example real_vision_shape -- --size 768 --runs 2
    cargo run --release --example lfm2_real_decode
"""

import argparse
import time

import torch


def vision(size: int, runs: int) -> None:
    import timm

    model = timm.create_model("mobilenetv5_300m_enc", pretrained=False).eval()
    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        for i in range(runs):
            t = time.perf_counter()
            y = model.forward_features(x)
            print(f"timm run {i}: {size}x{size} -> {list(y.shape)} in {time.perf_counter() - t:.2f}s")


def lfm2(prompt: int, new: int) -> None:
    from transformers import Lfm2Config, Lfm2ForCausalLM

    cfg = Lfm2Config(vocab_size=65536, hidden_size=2048, intermediate_size=12288, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8,
                     layer_types=["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
                     block_auto_adjust_ff_dim=True, block_multiple_of=256, block_ffn_dim_multiplier=1.0,
                     tie_word_embeddings=True)
    model = Lfm2ForCausalLM(cfg).eval()
    ids = torch.randint(0, 65536, (1, prompt))
    with torch.inference_mode():
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        print(f"prefill {prompt} tokens: {(time.perf_counter() - t) * 1e3:.0f} ms")
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        steps = []
        for _ in range(new):
            t = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            steps.append((time.perf_counter() - t) * 1e3)
        print(f"decode {new} tokens: {sum(steps) / len(steps):.0f} ms/token (steps {[round(s) for s in steps]})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["vision", "lfm2"])
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.what == "vision":
        vision(a.size, a.runs)
    else:
        lfm2(a.prompt, a.new)


if __name__ == "__main__":
    main()
