#!/usr/bin/env python3
"""Run one benchmark command and record how busy the rest of the machine was meanwhile.

    python bench/measure.py --stdout F --stderr F --load F [--timeout S] [--wait-idle S] -- CMD ARGS...

On a 2-core machine a compiler running next to a benchmark halves (or, with OpenMP spin barriers,
wrecks) 2-thread results, so every peers.sh invocation goes through this wrapper:

* --wait-idle S: before starting, wait up to S seconds until the machine has been idle for
  --idle-window seconds in a row (other processes use less than --idle-threshold cores in every 1 s
  sample; a short gap between two compiler jobs is not enough); after S seconds it runs anyway.
* During the run: foreign CPU = (all CPU time the kernel counted, /proc/stat) - (CPU time of this
  command, getrusage of the child), divided by the wall time -> "foreign_cores" (1.0 = one core
  fully used by something else). Steal time (the hypervisor running other guests) is reported separately.

Writes --load as JSON: wall_s, self_cpu_s, foreign_cores, steal_cores, waited_s, busy_before_cores,
exit_code. Exits with the command's exit code (124 on timeout, like timeout(1)).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def cpu_times():
    """(busy seconds excluding steal, steal seconds) summed over all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / HZ, steal / HZ


def busy_cores(window):
    b0, _ = cpu_times()
    t0 = time.monotonic()
    time.sleep(window)
    b1, _ = cpu_times()
    return (b1 - b0) / (time.monotonic() - t0)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stdout", required=True)
    ap.add_argument("--stderr", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--wait-idle", type=float, default=0.0)
    ap.add_argument("--idle-threshold", type=float, default=0.1, help="cores")
    ap.add_argument("--idle-window", type=float, default=8.0, help="seconds of idle required before starting")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        sys.exit("no command")

    waited, busy = 0.0, None
    if a.wait_idle > 0:
        t_wait = time.monotonic()
        quiet = 0.0  # seconds of consecutive idle samples
        told = False
        while True:
            busy = busy_cores(1.0)
            quiet = quiet + 1.0 if busy < a.idle_threshold else 0.0
            waited = time.monotonic() - t_wait
            if quiet >= a.idle_window or waited >= a.wait_idle:
                break
            if busy >= a.idle_threshold and not told:
                print(f"[measure] machine busy ({busy:.2f} cores in use by other processes); waiting up to "
                      f"{a.wait_idle:.0f} s for {a.idle_window:.0f} s of idle", file=sys.stderr, flush=True)
                told = True
        waited = max(0.0, waited - a.idle_window) if quiet >= a.idle_window else waited
        if told:
            print(f"[measure] waited {waited:.0f} s; " + ("idle now" if quiet >= a.idle_window else
                  f"no {a.idle_window:.0f} s idle stretch (last sample: {busy:.2f} busy cores), running anyway"),
                  file=sys.stderr, flush=True)

    c0 = children_cpu()
    b0, s0 = cpu_times()
    t0 = time.monotonic()
    with open(a.stdout, "wb") as out, open(a.stderr, "wb") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        try:
            rc = p.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = 124
    wall = time.monotonic() - t0
    b1, s1 = cpu_times()
    self_cpu = children_cpu() - c0
    # /proc/stat counts in clock ticks: allow two ticks per CPU of rounding before calling it foreign
    slack = 2.0 * (os.cpu_count() or 1) / HZ
    foreign = max(0.0, (b1 - b0) - self_cpu - slack) / wall if wall > 0 else 0.0
    with open(a.load, "w") as f:
        json.dump({"wall_s": round(wall, 3), "self_cpu_s": round(self_cpu, 3),
                   "foreign_cores": round(foreign, 3), "steal_cores": round((s1 - s0) / wall, 3) if wall else 0.0,
                   "waited_s": round(waited, 1),
                   "busy_before_cores": None if busy is None else round(busy, 3), "exit_code": rc}, f)
    sys.exit(rc)


if __name__ == "__main__":
    main()
