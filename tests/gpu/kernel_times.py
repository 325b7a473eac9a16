#!/usr/bin/env python3
"""Per-kernel GPU time, grouped by kernel name: where a step's time goes, for
the next optimisation. From Nsight Compute's CSV (`ncu --csv --metrics
gpu__time_duration.sum ...`) or from kernel_trace's JSON (--trace: the CUPTI
tracer in tests/gpu/kernel_trace.c, which needs no hardware counters and sees
kernels inside CUDA graphs). Prints a table (largest first) and, with --json
FILE, the same as JSON. Standard library only.

usage: kernel_times.py NCU_CSV [--steps N] [--json FILE]
       kernel_times.py --trace TRACE_JSON [--steps N] [--step-ms MS] [--min-calls C] [--json FILE]
  --steps N divides the totals by N (the steps the profiled run made; with a
    trace that has timed windows, the steps inside them).
  --step-ms MS: the step time measured in the same run; the table then shows
    how much of it no kernel was running (launch gaps, host work). A trace with
    windows gives that itself: window time less the time some kernel ran.
  --min-calls C: without windows, leave out kernels launched fewer than C
    times in all (the warm-up's one-off kernels, a benchmark's own limit
    measurement).
Exits 1 on a trace with no kernel records, or whose CUPTI calls failed.
"""
import argparse
import collections
import csv
import json
import re
import sys

UNIT = {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3, "second": 1.0, "s": 1.0}


def short(name):
    """'void gemv_kernel<1, float>(float *, ...)' -> 'gemv_kernel<1, float>'."""
    name = re.sub(r"\(.*$", "", name.strip())
    return re.sub(r"^(void|static)\s+", "", name)


def demangle(name):
    """'_Z11gemv_kernelILi1E13__nv_bfloat16EvPT0_...' -> 'gemv_kernel' (the
    identifier only; no c++filt on the GPU machine is assumed)."""
    if not name.startswith("_Z"):
        return name
    rest, parts = name[2:].lstrip("LN"), []
    while True:  # nested names: N 4glmtp 11gemv_kernel E ...
        m = re.match(r"(\d+)", rest)
        if not m:
            break
        n = int(m.group(1))
        parts.append(rest[len(m.group(1)):len(m.group(1)) + n])
        rest = rest[len(m.group(1)) + n:]
        if not rest.startswith(tuple("0123456789")):
            break
    return "::".join(parts) if parts else name


def from_trace(path, min_calls):
    """Per-kernel seconds and calls, and the seconds of the timed windows with
    no kernel running (None without windows)."""
    t = json.load(open(path))
    if t.get("errors"):
        sys.exit(f"kernel_times: {path}: CUPTI failed ({t.get('first_error')}); the figures would be wrong")
    if not t.get("records") or t.get("no_timestamps", 0) >= t.get("records", 0):
        sys.exit(f"kernel_times: {path}: no kernel records with timestamps (was the tracer loaded?)")
    windowed = t.get("windows", 0) > 0
    total, count = collections.defaultdict(float), collections.Counter()
    for k in t["kernels"]:
        calls, ns = (k["window_calls"], k["window_ns"]) if windowed else (k["calls"], k["ns"])
        if not calls or (not windowed and calls < min_calls):
            continue
        key = f"{demangle(k['name'])} grid {'x'.join(map(str, k['grid']))}"
        total[key] += ns * 1e-9
        count[key] += calls
    for what in ("dropped", "groups_over_limit", "no_timestamps"):
        if t.get(what):
            print(f"kernel_times: the trace lost records: {what} {t[what]}", file=sys.stderr)
    idle = (t["window_ns"] - t["window_busy_ns"]) * 1e-9 if windowed else None
    return total, count, idle


def from_ncu(path):
    lines = open(path, errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit("kernel_times: no ncu CSV header (\"ID\",...) in " + path)
    total, count = collections.defaultdict(float), collections.Counter()
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        try:
            v = float(row["Metric Value"].replace(",", "")) * UNIT.get(row.get("Metric Unit", "nsecond"), 1e-9)
        except (KeyError, ValueError):
            continue
        k = short(row.get("Kernel Name", "?"))
        total[k] += v
        count[k] += 1
    return total, count, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", nargs="?")
    ap.add_argument("--trace")
    ap.add_argument("--steps", type=float, default=1.0)
    ap.add_argument("--step-ms", type=float)
    ap.add_argument("--min-calls", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    if bool(a.csv) == bool(a.trace):
        sys.exit("kernel_times: give an ncu CSV or --trace JSON (one of them)")
    total, count, idle_s = from_trace(a.trace, a.min_calls) if a.trace else from_ncu(a.csv)
    rows = sorted(total, key=lambda k: -total[k])
    all_s = sum(total.values())
    print(f"{'kernel':60s} {'calls/step':>10s} {'us/step':>10s} {'share':>7s}")
    for k in rows:
        print(f"{k[:60]:60s} {count[k] / a.steps:10.1f} {1e6 * total[k] / a.steps:10.1f} {100 * total[k] / all_s:6.1f}%")
    print(f"{'all kernels':60s} {sum(count.values()) / a.steps:10.1f} {1e6 * all_s / a.steps:10.1f}")
    out = {"steps": a.steps, "total_us_per_step": 1e6 * all_s / a.steps,
           "kernels": [{"name": k, "calls_per_step": count[k] / a.steps, "us_per_step": 1e6 * total[k] / a.steps}
                       for k in rows]}
    if idle_s is not None:  # measured in the trace's own windows
        idle = 1e6 * idle_s / a.steps
        step_us = 1e3 * a.step_ms if a.step_ms else None
        share = f"{100 * idle / step_us:6.1f}%" if step_us else ""
        print(f"{'no kernel running (timed windows)':60s} {'':10s} {idle:10.1f} {share}")
        out["no_kernel_us_per_step"] = idle
        if step_us:
            out["step_us"] = step_us
    elif a.step_ms:
        idle = 1e3 * a.step_ms - out["total_us_per_step"]
        print(f"{'no kernel running (of the measured step)':60s} {'':10s} {idle:10.1f} {100 * idle / (1e3 * a.step_ms):6.1f}%")
        out["step_us"], out["no_kernel_us_per_step"] = 1e3 * a.step_ms, idle
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
