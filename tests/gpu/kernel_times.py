#!/usr/bin/env python3
"""Per-kernel GPU time from Nsight Compute's CSV (`ncu --csv --metrics
gpu__time_duration.sum ...`), grouped by kernel name: where a decode step's
time goes, for the next optimisation. Prints a table (largest first) and, with
--json FILE, the same as JSON. Standard library only.

usage: kernel_times.py NCU_CSV [--steps N] [--json FILE]
  --steps N divides the totals by N (the steps the profiled run made).
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", type=float, default=1.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    lines = open(a.csv, errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit("kernel_times: no ncu CSV header (\"ID\",...) in " + a.csv)
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
    rows = sorted(total, key=lambda k: -total[k])
    all_s = sum(total.values())
    print(f"{'kernel':60s} {'calls/step':>10s} {'us/step':>10s} {'share':>7s}")
    for k in rows:
        print(f"{k[:60]:60s} {count[k] / a.steps:10.1f} {1e6 * total[k] / a.steps:10.1f} {100 * total[k] / all_s:6.1f}%")
    print(f"{'all kernels':60s} {sum(count.values()) / a.steps:10.1f} {1e6 * all_s / a.steps:10.1f}")
    if a.json:
        json.dump({"steps": a.steps, "total_us_per_step": 1e6 * all_s / a.steps,
                   "kernels": [{"name": k, "calls_per_step": count[k] / a.steps, "us_per_step": 1e6 * total[k] / a.steps}
                               for k in rows]}, open(a.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
