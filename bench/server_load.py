"""Load test of `autoneural serve` on loopback, bounded in time.

    python bench/server_load.py [--clients 4] [--seconds 60] [--binary target/release/autoneural]

Needs the `openai` package (python/tests/requirements.txt). Two parts:

1. Soak: N concurrent streaming clients for the given time against the shipped model, each
   asking about the shipped cockpit images in turn (data: URIs). Reports requests/s, time to first
   token and inter-token latency percentiles (client side), errors, and the server's resident
   memory at the start and at the end.
2. Concurrency gain: 4 clients streaming text-only requests back to back (the random-weight
   model) against a server with --parallel 4 and against one with --parallel 1 (requests served
   one by one), generated tokens per second in each case. Concurrent sequences run on their own
   threads; their decode steps are not batched into one forward yet.

Everything listens on 127.0.0.1 and the run ends after the given time.
"""
import argparse
import asyncio
import base64
import json
import pathlib
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import openai

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = ["cockpit_road.png", "cockpit_cluster.png", "cockpit_cabin.png"]
QUESTIONS = ["What colour is the traffic light?", "Which warning lights are on?",
             "How many passengers are there?"]


class Server:
    def __init__(self, binary, *args):
        self.proc = subprocess.Popen([binary, "serve", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.base = None
        while self.base is None:
            line = self.proc.stderr.readline()
            if not line:
                sys.exit("the server exited before listening")
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.base = m.group(1)
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/health") as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.05)
        sys.exit("the model did not load")

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def one_request(client, messages, max_tokens, stats):
    t0 = time.perf_counter()
    last = None
    try:
        stream = await client.chat.completions.create(
            model="autoneural", messages=messages, stream=True, max_tokens=max_tokens,
            stream_options={"include_usage": True})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                stats["tokens"] += chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                if last is None:
                    stats["ttft"].append(now - t0)
                else:
                    stats["itl"].append(now - last)
                last = now
        stats["requests"] += 1
    except Exception as e:  # counted, and the load goes on
        stats["errors"].append(repr(e)[:200])


async def soak(base, clients, seconds, max_tokens, rss):
    images = ["data:image/png;base64," + base64.b64encode((ROOT / "assets" / i).read_bytes()).decode()
              for i in IMAGES]
    stats = {"requests": 0, "tokens": 0, "ttft": [], "itl": [], "errors": [], "rss": []}
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    end = time.perf_counter() + seconds

    async def worker(k):
        i = k
        while time.perf_counter() < end:
            msg = [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": images[i % len(images)]}},
                {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}]
            await one_request(client, msg, max_tokens, stats)
            i += 1

    async def sample_rss():
        while time.perf_counter() < end:
            stats["rss"].append((round(time.perf_counter() - t0, 1), rss()))
            await asyncio.sleep(max(1.0, seconds / 12))

    t0 = time.perf_counter()
    await asyncio.gather(sample_rss(), *(worker(k) for k in range(clients)))
    stats["seconds"] = time.perf_counter() - t0
    stats["rss"].append((round(stats["seconds"], 1), rss()))
    await client.close()
    return stats


async def burst(base, n, max_tokens, seconds):
    """`n` clients sending text-only requests back to back for `seconds`."""
    stats = {"requests": 0, "tokens": 0, "ttft": [], "itl": [], "errors": []}
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    end = time.perf_counter() + seconds

    async def worker(k):
        i = 0
        while time.perf_counter() < end:
            await one_request(client, [{"role": "user", "content": f"go {k} {i}"}], max_tokens, stats)
            i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(n)))
    stats["seconds"] = time.perf_counter() - t0
    await client.close()
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "autoneural"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--burst-tokens", type=int, default=512)
    ap.add_argument("--burst-seconds", type=float, default=15)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.seconds > 3600:
        sys.exit("--seconds is capped at 3600")

    report = {}
    s = Server(a.binary, "--model", str(ROOT / "models" / "autoneural-cockpit-tiny"),
               "--parallel", str(a.clients), "--queue", str(2 * a.clients))
    try:
        rss0 = s.rss_mib()
        st = asyncio.run(soak(s.base, a.clients, a.seconds, a.max_tokens, s.rss_mib))
        rss1 = s.rss_mib()
    finally:
        s.stop()
    report["soak"] = {
        "clients": a.clients, "seconds": round(st["seconds"], 1), "requests": st["requests"],
        "requests_per_s": round(st["requests"] / st["seconds"], 2),
        "generated_tokens_per_s": round(st["tokens"] / st["seconds"], 1),
        "ttft_ms": {p: round(1000 * pct(st["ttft"], p), 1) for p in (50, 90, 99)},
        "itl_ms": {p: round(1000 * pct(st["itl"], p), 2) for p in (50, 90, 99)},
        "errors": len(st["errors"]), "error_examples": st["errors"][:3],
        "server_rss_mib": {"start": round(rss0, 1), "end": round(rss1, 1),
                           "samples": [(t, round(m, 1)) for t, m in st["rss"]]},
    }
    burst_rates = {}
    for parallel in (4, 1):
        s = Server(a.binary, "--model", str(ROOT / "models" / "autoneural-tiny-random"),
                   "--parallel", str(parallel), "--queue", "8")
        try:
            asyncio.run(burst(s.base, 1, 8, 1))  # warm-up
            b = asyncio.run(burst(s.base, 4, a.burst_tokens, a.burst_seconds))
        finally:
            s.stop()
        burst_rates[parallel] = b["tokens"] / b["seconds"]
        report[f"four_requests_parallel_{parallel}"] = {
            "seconds": round(b["seconds"], 3), "tokens": b["tokens"], "requests": b["requests"],
            "tokens_per_s": round(burst_rates[parallel], 1), "errors": len(b["errors"])}
    report["gain_parallel_4_over_1"] = round(burst_rates[4] / burst_rates[1], 2)

    sk = report["soak"]
    print(f"soak: {sk['clients']} streaming clients for {sk['seconds']} s against the shipped model")
    print(f"  {sk['requests']} requests ({sk['requests_per_s']} /s), {sk['generated_tokens_per_s']} tokens/s, "
          f"{sk['errors']} errors")
    print(f"  time to first token ms  p50 {sk['ttft_ms'][50]}  p90 {sk['ttft_ms'][90]}  p99 {sk['ttft_ms'][99]}")
    print(f"  inter-token latency ms  p50 {sk['itl_ms'][50]}  p90 {sk['itl_ms'][90]}  p99 {sk['itl_ms'][99]}")
    print(f"  server RSS MiB          start {sk['server_rss_mib']['start']}  end {sk['server_rss_mib']['end']}")
    print("  server RSS MiB by second: " + ", ".join(f"{t:g}s {m}" for t, m in sk["server_rss_mib"]["samples"]))
    for p in (4, 1):
        r = report[f"four_requests_parallel_{p}"]
        print(f"4 clients, requests of up to {a.burst_tokens} tokens for {r['seconds']} s, --parallel {p}: "
              f"{r['tokens_per_s']} tokens/s ({r['requests']} requests, {r['errors']} errors)")
    print(f"gain of --parallel 4 over one by one: {report['gain_parallel_4_over_1']}x")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
