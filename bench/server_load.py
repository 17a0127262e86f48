"""Load test of `autoneural serve` on loopback, bounded in time.

    python bench/server_load.py [--clients 4] [--seconds 60] [--burst-seconds 15] [--repeats 2]
                                [--binary target/release/autoneural] [--json FILE]

Needs the `openai` package (python/tests/requirements.txt). Two parts:

1. Soak: N concurrent streaming clients for the given time against the shipped model, each
   asking about the shipped cockpit images in turn (data: URIs). Reports requests/s, time to first
   token and inter-token latency percentiles (client side), errors, and the server's resident
   memory at the start and at the end.
2. Batching: 4 streaming clients sending requests back to back, against a server with
   --parallel 4 and --batch-decode on (the decode steps of the sequences in flight run as one
   batched forward pass), then against one with --batch-decode off (each sequence on its own
   thread), then --parallel 1 (one by one): completion tokens per second, time to first token
   and inter-token latency for each, and the server's CPU time per generated token. Once with
   the shipped model (image + question, its short answers), once with the random-weight model
   (text prompts, long answers). The modes take turns --repeats times. These clients read the
   SSE stream from a raw socket (the `openai` client costs more CPU per chunk than the server
   spends producing it, and would share the 2 cores with the server).

Everything listens on 127.0.0.1 and the run ends after the given times (--seconds 0 skips the
soak).
"""
import argparse
import asyncio
import base64
import json
import os
import pathlib
import re
import resource
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
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/health") as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.05)
        sys.exit("the model did not load")

    def cpu_s(self):
        """User + system CPU seconds the server has used so far."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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
    images = image_uris()
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


DELTA = re.compile(rb'"delta":\{"content":"(?!")')
USAGE = re.compile(rb'"completion_tokens":(\d+)')


async def light_request(base, messages, max_tokens, stats):
    """One streamed chat request over a raw socket, scanning the SSE bytes for content deltas
    and the usage chunk: the `openai` client parses every chunk into objects, which costs more
    CPU than the server spends producing it, and on a 2-core machine the load generator would
    then measure itself."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"model": "autoneural", "messages": messages, "stream": True,
                       "max_tokens": max_tokens, "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    last = None
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        buf, tokens = b"", None
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.perf_counter()
            buf += data
            *events, buf = buf.split(b"\n\n")
            for e in events:
                if DELTA.search(e):
                    if last is None:
                        stats["ttft"].append(now - t0)
                    else:
                        stats["itl"].append(now - last)
                    last = now
                elif (m := USAGE.search(e)) is not None:
                    tokens = int(m.group(1))
        writer.close()
        if tokens is None:
            raise RuntimeError("no usage chunk")
        stats["tokens"] += tokens
        stats["requests"] += 1
    except Exception as e:  # counted, and the load goes on
        stats["errors"].append(repr(e)[:200])


def image_uris():
    return ["data:image/png;base64," + base64.b64encode((ROOT / "assets" / i).read_bytes()).decode()
            for i in IMAGES]


async def burst(base, n, max_tokens, seconds, images=None, server=None):
    """`n` clients streaming requests back to back for `seconds` (through the light client):
    text-only, or (with `images`) each image with its question in turn. With `server`, also the
    CPU time it and this process used meanwhile."""
    stats = {"requests": 0, "tokens": 0, "ttft": [], "itl": [], "errors": []}
    end = time.perf_counter() + seconds

    async def worker(k):
        i = k
        while time.perf_counter() < end:
            if images:
                msg = [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": images[i % len(images)]}},
                    {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}]
            else:
                msg = [{"role": "user", "content": f"go {k} {i}"}]
            await light_request(base, msg, max_tokens, stats)
            i += 1

    cpu0 = server.cpu_s() if server else 0.0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(n)))
    stats["seconds"] = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    stats["server_cpu_s"] = (server.cpu_s() - cpu0) if server else float("nan")
    stats["client_cpu_s"] = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return stats


def summary(b):
    return {
        "seconds": round(b["seconds"], 3), "tokens": b["tokens"], "requests": b["requests"],
        "tokens_per_s": round(b["tokens"] / b["seconds"], 1), "errors": len(b["errors"]),
        "error_examples": b["errors"][:3],
        "ttft_ms": {p: round(1000 * pct(b["ttft"], p), 1) for p in (50, 90, 99)},
        "itl_ms": {p: round(1000 * pct(b["itl"], p), 2) for p in (50, 90, 99)},
        "server_cpu_s": round(b["server_cpu_s"], 2), "client_cpu_s": round(b["client_cpu_s"], 2),
        "server_cpu_ms_per_token": round(1000 * b["server_cpu_s"] / max(1, b["tokens"]), 3),
    }


# (server flags, label) of the batching runs, in order.
MODES = [(["--parallel", "4", "--batch-decode", "on"], "batched"),
         (["--parallel", "4", "--batch-decode", "off"], "thread per sequence"),
         (["--parallel", "1"], "one by one")]


def batching(binary, seconds, workloads, repeats):
    """Each workload (name, model dir, max_tokens, images or None) against each mode, the modes
    taking turns `repeats` times (so a slow spell of a shared machine hits them alike); the runs
    of a mode are pooled."""
    pooled = {}
    for _ in range(repeats):
        for name, model, max_tokens, images in workloads:
            for flags, label in MODES:
                s = Server(binary, "--model", str(model), "--queue", "8", *flags)
                try:
                    asyncio.run(burst(s.base, 1, 8, 1, images))  # warm-up (and the image cache)
                    b = asyncio.run(burst(s.base, 4, max_tokens, seconds, images, s))
                finally:
                    s.stop()
                p = pooled.setdefault(name, {}).setdefault(label, None)
                if p is None:
                    pooled[name][label] = b
                else:
                    for k in ("requests", "tokens", "seconds", "server_cpu_s", "client_cpu_s"):
                        p[k] += b[k]
                    for k in ("ttft", "itl", "errors"):
                        p[k].extend(b[k])
    return {name: {label: summary(b) for label, b in runs.items()}
            for name, runs in pooled.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "autoneural"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60, help="soak time (0: no soak)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--burst-tokens", type=int, default=512)
    ap.add_argument("--burst-seconds", type=float, default=15, help="per run of a batching mode")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each batching mode")
    ap.add_argument("--extra-model", help="also run the batching modes on this model directory "
                    "(text prompts, up to --burst-tokens tokens), e.g. a real-shaped checkpoint")
    ap.add_argument("--no-tiny", action="store_true",
                    help="skip the batching runs on the two shipped tiny models")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.seconds > 3600 or a.burst_seconds > 600 or not 1 <= a.repeats <= 10:
        sys.exit("--seconds is capped at 3600, --burst-seconds at 600, --repeats at 1..10")

    report = {}
    if a.seconds > 0:
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
        sk = report["soak"]
        print(f"soak: {sk['clients']} streaming clients for {sk['seconds']} s against the shipped model")
        print(f"  {sk['requests']} requests ({sk['requests_per_s']} /s), {sk['generated_tokens_per_s']} tokens/s, "
              f"{sk['errors']} errors")
        print(f"  time to first token ms  p50 {sk['ttft_ms'][50]}  p90 {sk['ttft_ms'][90]}  p99 {sk['ttft_ms'][99]}")
        print(f"  inter-token latency ms  p50 {sk['itl_ms'][50]}  p90 {sk['itl_ms'][90]}  p99 {sk['itl_ms'][99]}")
        print(f"  server RSS MiB          start {sk['server_rss_mib']['start']}  end {sk['server_rss_mib']['end']}")
        print("  server RSS MiB by second: " + ", ".join(f"{t:g}s {m}" for t, m in sk["server_rss_mib"]["samples"]))

    workloads = [] if a.no_tiny else [
        ("shipped model, image + question, up to %d tokens" % a.max_tokens,
         ROOT / "models" / "autoneural-cockpit-tiny", a.max_tokens, image_uris()),
        ("random-weight model, text, up to %d tokens" % a.burst_tokens,
         ROOT / "models" / "autoneural-tiny-random", a.burst_tokens, None),
    ]
    if a.extra_model:
        workloads.append(("%s, text, up to %d tokens" % (pathlib.Path(a.extra_model).name, a.burst_tokens),
                          pathlib.Path(a.extra_model), a.burst_tokens, None))
    report["batching"] = batching(a.binary, a.burst_seconds, workloads, a.repeats)
    for name, runs in report["batching"].items():
        print(f"4 streaming clients, {a.repeats} x {a.burst_seconds:g} s per mode, {name}:")
        print(f"  {'':20} {'tokens/s':>9} {'requests':>8} {'errors':>6}   TTFT ms p50/p90/p99      "
              f"ITL ms p50/p90/p99    server CPU ms/token  client CPU s")
        for label, r in runs.items():
            t, i = r["ttft_ms"], r["itl_ms"]
            print(f"  {label:20} {r['tokens_per_s']:9.1f} {r['requests']:8d} {r['errors']:6d}   "
                  f"{t[50]:6.1f} {t[90]:6.1f} {t[99]:6.1f}    {i[50]:6.2f} {i[90]:6.2f} {i[99]:6.2f}"
                  f"    {r['server_cpu_ms_per_token']:8.3f}             {r['client_cpu_s']:6.1f}")
        on, off, one = (runs[m]["tokens_per_s"] for m in ("batched", "thread per sequence", "one by one"))
        print(f"  batched / thread per sequence: {on / off:.2f}x; batched / one by one: {on / one:.2f}x")
        runs["gain_batched_over_threads"] = round(on / off, 2)
        runs["gain_batched_over_one_by_one"] = round(on / one, 2)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
