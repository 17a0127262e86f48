#!/usr/bin/env python3
"""Summarise a bench/peers.sh run: OUTDIR/raw/*.json -> OUTDIR/peers.md and OUTDIR/peers.json.

    python bench/compare.py OUTDIR

Raw file names (written by peers.sh; one file per invocation and round):
    r<R>-llama-<Q4_0|Q8_0|F16>-t<T>.json    llama-bench -o json (a list: one pp entry, one tg entry)
    r<R>-ours-lm-<precision>-t<T>.json      autoneural bench lm --json ({"prefill_tok_s", "decode_tok_s", ...})
    r<R>-torch-vision.json                  bench/torch_vision.py ({"latency_ms", ...})
    r<R>-ours-vision-<precision>.json       autoneural bench vision --json ({"latency_ms", ...})
    <name>.err.json                         a failed invocation ({"error", "exit_code", "command"})

Every number in the tables is the median over rounds (the rounds interleave the engines back to back);
the range over rounds is in parentheses. Ratios are ours / peer of the medians: for tok/s above 1 means
ours is faster, for vision latency below 1 means ours is faster.
"""

import datetime
import glob
import json
import os
import platform
import re
import statistics
import sys
from importlib import metadata

# our LM precision -> llama.cpp format it is compared with
LM_PEER = {"w4a16": "Q4_0", "w4a8": "Q4_0", "w8a16": "Q8_0", "w8a8": "Q8_0", "float": "F16"}


def load(path):
    with open(path) as f:
        return json.load(f)


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def fmt_range(xs, nd=1):
    if not xs:
        return "–"
    m = fmt(med(xs), nd)
    if len(xs) == 1:
        return m
    return f"{m} ({fmt(min(xs), nd)}–{fmt(max(xs), nd)})"


def ratio(a, b):
    return a / b if a is not None and b else None


def pick(obj, keys, precision=None, threads=None, image_size=None):
    """The result object of one autoneural run: the top-level object when it has the keys (the
    `bench lm|vision ... --json` contract), else the first row of a report list (e.g. {"lm": [rows]})
    that has them and matches precision/threads/image_size where the row names them."""
    if isinstance(obj, dict) and all(k in obj for k in keys):
        return obj
    rows = []
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, list):
                rows += [x for x in v if isinstance(x, dict)]
    elif isinstance(obj, list):
        rows = [x for x in obj if isinstance(x, dict)]
    for row in rows:
        if not all(k in row for k in keys):
            continue
        if precision is not None and row.get("precision", precision) != precision:
            continue
        if threads is not None and row.get("threads", threads) != threads:
            continue
        if image_size is not None and row.get("image_size", image_size) != image_size:
            continue
        return row
    return obj if isinstance(obj, dict) else {}


BUSY = 0.1  # cores used by other processes during a run above which the run is flagged


def load_cell(row):
    x = row.get("foreign_cores_max")
    if x is None:
        return "–"
    return f"**{x:.2f}**" if x >= BUSY else f"{x:.2f}"


def uarch(vendor, family, model):
    """A best-effort microarchitecture name (AMD only; the VM may move between hosts)."""
    if vendor != "AuthenticAMD" or family is None:
        return None
    if family == 26:
        return "Zen 5"
    if family == 25:
        return "Zen 4" if (0x10 <= model <= 0x1f or 0x60 <= model <= 0x7f or 0xa0 <= model <= 0xaf) else "Zen 3"
    if family == 23:
        return "Zen/Zen 2"
    return None


def cpu_info():
    info = {"model": "unknown", "logical_cpus": 0}
    flags = set()
    vendor = family = model = None
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name":
                info["model"] = v
                info["logical_cpus"] += 1
            elif k == "vendor_id" and vendor is None:
                vendor = v
            elif k == "cpu family" and family is None:
                family = int(v)
            elif k == "model" and model is None:
                model = int(v)
            elif k == "microcode" and "microcode" not in info:
                info["microcode"] = v
            elif k == "flags" and not flags:
                flags = set(v.split())
    except OSError:
        pass
    info.update(vendor=vendor, family=family, model_id=model, uarch=uarch(vendor, family, model))
    info["isa"] = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                               "avx512_bf16", "avx512_fp16", "amx_int8") if f in flags]
    caches = {}
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            lvl, typ, size = (open(f"{d}/{x}").read().strip() for x in ("level", "type", "size"))
            caches[f"L{lvl}{'d' if typ == 'Data' else 'i' if typ == 'Instruction' else ''}"] = size
        except OSError:
            pass
    info["caches_per_core"] = caches
    info["kernel"] = platform.release()
    return info


def versions(meta):
    v = {}
    for pkg in ("torch", "timm", "transformers", "tokenizers", "safetensors", "numpy", "gguf"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = None
    v["python"] = platform.python_version()
    v["llama_cpp_python_sdist"] = meta.get("llama_cpp_python")
    v["llama_cpp_commit"] = meta.get("llama_commit")
    return v


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    meta = load(os.path.join(out, "meta.json")) if os.path.exists(os.path.join(out, "meta.json")) else {}
    timing = load(os.path.join(out, "timing.json")) if os.path.exists(os.path.join(out, "timing.json")) else {}
    commands = open(os.path.join(out, "commands.txt")).read().splitlines() \
        if os.path.exists(os.path.join(out, "commands.txt")) else []

    # ------------------------------------------------------------ collect
    lm = {}        # (engine, fmt, threads) -> {"pp": [..], "tg": [..], "rounds": [..], "pp_by_round": {}, ...}
    vision = {}    # (engine, precision) -> {"ms": [...], "by_round": {}}
    failures = []
    raw = {}
    llama_build = None
    torch_info = None

    def lm_slot(engine, f, t):
        return lm.setdefault((engine, f, t), {"pp": {}, "tg": {}})

    loads = {}     # run name -> bench/measure.py record (foreign_cores, waited_s, ...)
    for path in sorted(glob.glob(os.path.join(out, "raw", "*.load.json"))):
        try:
            run = os.path.basename(path)[:-len(".load.json")]
            loads[run] = load(path)
            retries = path[:-len(".load.json")] + ".retries"
            if os.path.exists(retries):
                loads[run]["retries"] = int(open(retries).read().strip() or 0)
        except ValueError:
            pass

    for path in sorted(glob.glob(os.path.join(out, "raw", "*.json"))):
        name = os.path.basename(path)[:-5]
        if name.endswith(".load"):
            continue
        err = name.endswith(".err")
        if err:
            name = name[:-4]
        m = re.match(r"r(\d+)-(.*)$", name)
        if not m:
            continue
        rnd, what = int(m.group(1)), m.group(2)
        try:
            obj = load(path)
        except ValueError as e:
            obj, err = {"error": f"unreadable JSON: {e}"}, True
        raw[os.path.basename(path)] = obj
        if err:
            failures.append({"run": name, **obj})
            continue
        if m2 := re.match(r"llama-(\w+)-t(\d+)$", what):
            q, t = m2.group(1), int(m2.group(2))
            slot = lm_slot("llama.cpp", q, t)
            for e in obj if isinstance(obj, list) else [obj]:
                llama_build = llama_build or {k: e.get(k) for k in ("build_commit", "build_number", "cpu_info",
                                                                     "backends", "model_type", "n_batch", "n_ubatch",
                                                                     "type_k", "flash_attn", "use_mmap")}
                slot.setdefault("model_type", e.get("model_type"))
                slot.setdefault("model_size", e.get("model_size"))
                if e.get("n_prompt", 0) > 0 and e.get("n_gen", 0) == 0:
                    slot["pp"][rnd] = e["avg_ts"]
                elif e.get("n_gen", 0) > 0 and e.get("n_prompt", 0) == 0:
                    slot["tg"][rnd] = e["avg_ts"]
        elif m2 := re.match(r"ours-lm-(\w+)-t(\d+)$", what):
            p, t = m2.group(1), int(m2.group(2))
            slot = lm_slot("autoneural", p, t)
            obj = pick(obj, ("prefill_tok_s", "decode_tok_s"), p, t)
            for key, dst in (("prefill_tok_s", "pp"), ("decode_tok_s", "tg")):
                if isinstance(obj.get(key), (int, float)):
                    slot[dst][rnd] = float(obj[key])
                else:
                    failures.append({"run": name, "error": f"no numeric '{key}' in the JSON output"})
        elif what == "torch-vision":
            vision.setdefault(("pytorch", "float32"), {})[rnd] = float(obj["latency_ms"])
            torch_info = torch_info or obj
        elif m2 := re.match(r"ours-vision-(\w+)$", what):
            obj = pick(obj, ("latency_ms",), m2.group(1), meta.get("vision_threads"), meta.get("vision_size"))
            if isinstance(obj.get("latency_ms"), (int, float)):
                vision.setdefault(("autoneural", m2.group(1)), {})[rnd] = float(obj["latency_ms"])
            else:
                failures.append({"run": name, "error": "no numeric 'latency_ms' in the JSON output"})

    # ------------------------------------------------------------ LM table
    threads = sorted({t for (_, _, t) in lm})
    llama_fmts = [q for q in meta.get("llama_types", ["Q4_0", "Q8_0"])]
    our_precs = meta.get("precisions", ["w4a16", "w8a16", "w4a8", "float"])
    lm_rows = []

    def max_foreign(run):
        xs = [v.get("foreign_cores", 0.0) for k, v in loads.items() if re.fullmatch(rf"r\d+-{re.escape(run)}", k)]
        return max(xs) if xs else None

    def paired(a, b):
        """per-round ratios a/b over rounds where both exist"""
        return [a[r] / b[r] for r in sorted(a) if r in b and b[r]]

    for t in threads:
        order = []
        for q in llama_fmts:
            order.append(("llama.cpp", q))
            order += [("autoneural", p) for p in our_precs if LM_PEER.get(p, "Q8_0") == q]
        order += [("autoneural", p) for p in our_precs if LM_PEER.get(p, "Q8_0") not in llama_fmts]
        for engine, f in order:
            s = lm.get((engine, f, t))
            row = {"engine": engine, "format": f, "threads": t,
                   "pp_tok_s": med(list(s["pp"].values())) if s else None,
                   "tg_tok_s": med(list(s["tg"].values())) if s else None,
                   "model_size_bytes": (s or {}).get("model_size"),
                   "pp_rounds": sorted((s or {}).get("pp", {}).items()),
                   "tg_rounds": sorted((s or {}).get("tg", {}).items())}
            run = f"llama-{f}-t{t}" if engine == "llama.cpp" else f"ours-lm-{f}-t{t}"
            row["foreign_cores_max"] = max_foreign(run)
            if engine == "autoneural":
                peer = LM_PEER.get(f, "Q8_0")
                ps = lm.get(("llama.cpp", peer, t))
                if ps:
                    row["peer"] = f"llama.cpp {peer}"
                    row["pp_ratio"] = ratio(row["pp_tok_s"], med(list(ps["pp"].values())))
                    row["tg_ratio"] = ratio(row["tg_tok_s"], med(list(ps["tg"].values())))
                    if s:
                        row["pp_ratio_rounds"] = paired(s["pp"], ps["pp"])
                        row["tg_ratio_rounds"] = paired(s["tg"], ps["tg"])
            lm_rows.append(row)

    # ------------------------------------------------------------ vision table
    vis_rows = []
    ran_vision = any(re.match(r"r\d+-(torch-vision|ours-vision-)", k) for k in list(raw) + list(loads))
    base = vision.get(("pytorch", "float32"), {})
    vkeys = [("pytorch", "float32")] + [("autoneural", p) for p in meta.get("vision_precisions", [])]
    vkeys += [k for k in vision if k not in vkeys]
    for k in vkeys if ran_vision else []:
        v = vision.get(k, {})
        row = {"engine": k[0], "precision": k[1], "latency_ms": med(list(v.values())),
               "rounds": sorted(v.items()),
               "foreign_cores_max": max_foreign("torch-vision" if k[0] == "pytorch" else f"ours-vision-{k[1]}")}
        if k[0] == "autoneural":
            row["ratio_vs_pytorch"] = ratio(row["latency_ms"], med(list(base.values())))
            row["ratio_rounds"] = paired(v, base)
        vis_rows.append(row)

    # ------------------------------------------------------------ report
    cpu = cpu_info()
    vers = versions(meta)
    if torch_info:
        vers["torch_cpu_capability"] = torch_info.get("torch_cpu_capability")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    P, D = meta.get("prompt", 512), meta.get("decode", 128)
    size = meta.get("size", "1.2b")

    md = [f"# Peer comparison: autoneural vs llama.cpp and PyTorch ({now})", ""]
    ident = f"family {cpu['family']} model {cpu['model_id']}" + (f" = {cpu['uarch']}" if cpu.get("uarch") else "")
    md.append(f"- Machine: {cpu['model']} ({ident}, microcode {cpu.get('microcode', '?')}), {cpu['logical_cpus']} "
              f"logical CPUs, caches {', '.join(f'{k} {v}' for k, v in cpu['caches_per_core'].items())}, "
              f"kernel {cpu['kernel']}; ISA: {', '.join(cpu['isa'])}")
    if meta.get("cpu_id") and meta.get("llama_build_cpu") and meta["cpu_id"] != meta["llama_build_cpu"]:
        md.append(f"- **llama.cpp was built (GGML_NATIVE) on a different CPU ({meta['llama_build_cpu']}) than this "
                  f"run's ({meta['cpu_id']})**")
    lc = vers["llama_cpp_commit"] or "?"
    md.append(f"- llama.cpp: commit `{lc}` (vendored in the PyPI sdist llama_cpp_python=={vers['llama_cpp_python_sdist']}), "
              f"{meta.get('llama_build_flags', '')}"
              + (f"; llama-bench reports build `{llama_build['build_commit']}`" if llama_build else ""))
    md.append(f"- PyTorch {vers['torch']} (CPU capability {vers.get('torch_cpu_capability', '?')}), "
              f"timm {vers['timm']}, transformers {vers['transformers']}, gguf {vers['gguf']}, python {vers['python']}")
    md.append(f"- autoneural: `{meta.get('autoneural', '?')}`, repository HEAD `{meta.get('git_head', '?')}`"
              + (" (src/ or Cargo.toml modified)" if meta.get("git_dirty") else ""))
    ours_ok = any(r["engine"] == "autoneural" and (r.get("pp_rounds") or r.get("tg_rounds")) for r in lm_rows) \
        or any(r["engine"] == "autoneural" and r.get("rounds") for r in vis_rows)
    ours_fail = [f for f in failures if "-ours-" in f["run"]]
    if not ours_ok:
        md.append("- **autoneural: no successful run** — "
                  + (ours_fail[0].get("error", "?").strip()[:300] if ours_fail else "not run (PEERS_SKIP_OURS=1?)"))
    md.append(f"- Model: random-weight LFM2-{size} shape (`{meta.get('checkpoint', '?')}`); "
              f"GGUFs converted from the same checkpoint with the tree's convert_hf_to_gguf.py")
    md.append(f"- {meta.get('rounds', '?')} rounds, engines alternated back to back in every round; "
              "values are medians over rounds (min–max in parentheses)")
    if timing:
        md.append(f"- Wall time: setup {timing.get('setup_seconds')} s, benchmarks {timing.get('bench_seconds')} s"
                  + (f"; llama.cpp build took {meta['llama_build_seconds']} s when it was built"
                     if meta.get("llama_build_seconds") else ""))
    busy = sorted((k, v) for k, v in loads.items() if v.get("foreign_cores", 0) >= BUSY)
    if loads:
        line = ("- Other load: before every run the script waits for the machine to be idle; 'other load' is the "
                "most CPU (in cores) that other processes used during any round of that row. ")
        if busy:
            line += (f"**{len(busy)} of {len(loads)} runs overlapped other work (>= {BUSY} cores); their numbers "
                     "are suspect:** " + ", ".join(f"{k} {v['foreign_cores']:.2f}" for k, v in busy[:8])
                     + (", …" if len(busy) > 8 else ""))
        else:
            line += f"All {len(loads)} runs ran on an otherwise idle machine."
        waited = sum(v.get("waited_s", 0) for v in loads.values())
        if waited:
            line += f" Waiting for idle before the kept attempts took {waited:.0f} s in total."
        retried = sum(v.get("retries", 0) for v in loads.values())
        if retried:
            line += f" {retried} run(s) were measured again because other work overlapped them."
        md.append(line)
    md.append("")

    if lm_rows:
        md += [f"## Language model: prefill pp{P} and decode tg{D} (tok/s; higher is better)", "",
               "Ratios are ours / llama.cpp (w4* vs Q4_0, w8* vs Q8_0, float vs F16 when measured); "
               "> 1 means ours is faster.", "",
               f"| engine | format | threads | pp{P} tok/s | tg{D} tok/s | vs | pp ratio | tg ratio | other load |",
               "|---|---|---:|---:|---:|---|---:|---:|---:|"]
        for r in lm_rows:
            pp = fmt_range([v for _, v in r["pp_rounds"]])
            tg = fmt_range([v for _, v in r["tg_rounds"]])
            if r["engine"] == "autoneural" and not r["pp_rounds"] and not r["tg_rounds"]:
                pp = tg = "failed" if any(f["run"].endswith(f"ours-lm-{r['format']}-t{r['threads']}")
                                          for f in failures) else "not run"
            fcell = r["format"] + (f" ({r['model_size_bytes'] / 2**20:,.0f} MiB)" if r.get("model_size_bytes") else "")
            md.append(f"| {r['engine']} | {fcell} | {r['threads']} | {pp} | {tg} | {r.get('peer', '')} | "
                      f"{fmt(r.get('pp_ratio'), 2)} | {fmt(r.get('tg_ratio'), 2)} | {load_cell(r)} |")
        md.append("")

    if vis_rows:
        vs = meta.get("vision_size", 768)
        md += [f"## Vision encoder: MobileNetV5-300M at {vs}x{vs}, batch 1, "
               f"{meta.get('vision_threads', 2)} threads (latency ms; lower is better)", "",
               "PyTorch: timm `mobilenetv5_300m_enc` (random init, fp32, includes the MSFA), median of "
               f"{meta.get('vision_runs', '?')} runs after 2 warmups per round. Ratio is ours / PyTorch; "
               "< 1 means ours is faster.", "",
               "| engine | precision | latency ms | ratio vs PyTorch fp32 | other load |", "|---|---|---:|---:|---:|"]
        for r in vis_rows:
            lat = fmt_range([v for _, v in r["rounds"]])
            if r["engine"] == "autoneural" and not r["rounds"]:
                lat = "failed" if any(f["run"].endswith(f"ours-vision-{r['precision']}") for f in failures) \
                    else "not run"
            md.append(f"| {r['engine']} | {r['precision']} | {lat} | {fmt(r.get('ratio_vs_pytorch'), 2)} | {load_cell(r)} |")
        md.append("")

    if failures:
        md += ["## Failed runs", ""]
        seen = {}
        for f in failures:
            seen.setdefault(f.get("error", "?"), []).append(f["run"])
        for msg, runs in seen.items():
            md.append(f"- {len(runs)} run(s) ({', '.join(runs[:4])}{', …' if len(runs) > 4 else ''}): "
                      f"{msg.strip()[:700]}")
        md.append("")

    if commands:
        md += ["## Commands", "", "```"] + commands + ["```", ""]

    report = {"date_utc": now, "machine": cpu, "versions": vers, "meta": meta, "timing": timing,
              "llama_bench": llama_build, "loads": loads, "lm": lm_rows, "vision": vis_rows, "failures": failures,
              "commands": commands, "raw": raw}
    with open(os.path.join(out, "peers.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(out, "peers.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("\n".join(md))
    print(f"wrote {os.path.join(out, 'peers.md')} and {os.path.join(out, 'peers.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
