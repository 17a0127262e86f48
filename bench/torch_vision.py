#!/usr/bin/env python3
"""PyTorch fp32 latency of the MobileNetV5-300M vision encoder (timm, random init), one JSON line on stdout.

    python bench/torch_vision.py [--image-size 768] [--threads 2] [--warmup 2] [--runs 5]

The model is timm's `mobilenetv5_300m_enc` (pretrained=False; the Gemma 3n / AutoNeural vision tower
including its multi-scale fusion adapter), batch 1, float32, `torch.inference_mode()`,
`torch.set_num_threads(threads)`. The timed call is the model's full forward on a random image.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenetv5_300m_enc")
    ap.add_argument("--image-size", type=int, default=768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import timm

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    model = timm.create_model(a.model, pretrained=False).eval()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, a.image_size, a.image_size)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.runs):
            t = time.perf_counter()
            y = model(x)
            dt = (time.perf_counter() - t) * 1e3
            if i >= a.warmup:
                times.append(dt)
            print(f"{'warmup' if i < a.warmup else 'run'} {i}: {dt:.1f} ms", file=sys.stderr)
    out_shape = list(y.shape) if torch.is_tensor(y) else [list(t.shape) for t in y]
    print(json.dumps({
        "engine": "pytorch", "model": a.model, "dtype": "float32", "image_size": a.image_size,
        "threads": a.threads, "torch_threads": torch.get_num_threads(), "warmup": a.warmup, "runs": a.runs,
        "latency_ms": statistics.median(times), "latency_ms_min": min(times), "latency_ms_all": times,
        "output_shape": out_shape, "parameters": n_params, "model_build_s": build_s,
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }))


if __name__ == "__main__":
    main()
