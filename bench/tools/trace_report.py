#!/usr/bin/env python3
"""Reads a kernel timeline written by `dsq_model_bench --trace FILE` and prints where the
time goes: how long the GPU ran at least one kernel versus nothing, time per kernel (by
name), optionally the timeline itself, kernel by kernel, with the idle gap before each,
and the step split into the layers' half-steps (attention, MoE) by layer kind.

usage: trace_report.py TRACE.csv [--timeline FIRST:COUNT] [--top N] [--halves]
"""
import argparse
import csv
import re
import sys
from collections import defaultdict


def short_name(name):
    """The kernel's name without namespaces and parameter list; template arguments kept."""
    name = re.sub(r"\(anonymous namespace\)::|dsq::cuda::|dsq::", "", name)
    depth = 0
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            name = name[:i]
            break
    name = re.sub(r"^void ", "", name)
    return name if len(name) <= 70 else name[:67] + "..."


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["start"] = float(r["start_us"])
        r["end"] = float(r["end_us"])
        r["short"] = short_name(r["name"])
    rows.sort(key=lambda r: r["start"])
    return rows


# The one-launch mHC mixing kernels that open every half-step of a decode step (at most 8
# tokens: ops.h mhc_pre / mhc_post_pre).
MIXING_KERNELS = ("mhc_pre_cluster_kernel", "mhc_mix_pre_kernel")


# The ring-store kernel, by its names before and after it took any set of rings (traces of
# either build read alike).
RING_STORE_KERNELS = ("store_rings_kernel", "store_ring_rows_kernel")


def half_steps(rows):
    """(half, layer kind, duration us, direct-launch span us) per half-step: each runs from
    the start of one mixing kernel to the start of the next; halves alternate attention,
    MoE. An attention half is CSA when it runs the indexer, HCA when it runs a compressor
    (its compress kernel, or a ring store of more rings than the window's), else
    sliding-window; its MoE half takes its kind. The direct-launch span runs from the
    first start to the last end of the kernels launched outside a CUDA graph (the
    attention state)."""
    opens = [i for i, r in enumerate(rows) if r["short"].startswith(MIXING_KERNELS)]
    halves, kind = [], "?"
    for h, (a, b) in enumerate(zip(opens, opens[1:])):
        seg = rows[a:b]
        if h % 2 == 0:
            names = " ".join(r["short"] for r in seg)
            compressor = "compress_kernel" in names or any(
                r["short"].startswith(RING_STORE_KERNELS) and int(r["grid_y"]) > 1 for r in seg)
            kind = "CSA" if "indexer" in names else "HCA" if compressor else "sliding"
        direct = [r for r in seg if r["graph"] == "0"]
        span = max(r["end"] for r in direct) - min(r["start"] for r in direct) if direct else 0.0
        halves.append(("attention" if h % 2 == 0 else "MoE", kind, rows[b]["start"] - rows[a]["start"], span))
    return halves


def print_half_steps(rows):
    halves = half_steps(rows)
    if not halves:
        sys.exit("trace_report: --halves needs a decode-step trace (no one-launch mixing kernels found)")
    groups = defaultdict(list)
    for half, kind, dur, span in halves:
        groups[(half, kind)].append((dur, span))
    print("\n| half-step | layer kind | count | mean us | min us | max us | direct launches, mean span us |"
          "\n|---|---|---:|---:|---:|---:|---:|")
    for (half, kind), v in sorted(groups.items()):
        durs = [d for d, _ in v]
        print(f"| {half} | {kind} | {len(v)} | {sum(durs) / len(v):.1f} | {min(durs):.1f} | {max(durs):.1f} | "
              f"{sum(s for _, s in v) / len(v):.1f} |")
    print(f"all {len(halves)} half-steps: {sum(d for _, _, d, _ in halves):.1f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--timeline", help="FIRST:COUNT kernels (in start order) to list one by one")
    ap.add_argument("--top", type=int, default=25, help="kernel names in the per-name table")
    ap.add_argument("--halves", action="store_true", help="the half-steps' durations by layer kind")
    a = ap.parse_args()
    rows = load(a.trace)
    if not rows:
        sys.exit("trace_report: no kernels in " + a.trace)

    span = max(r["end"] for r in rows) - rows[0]["start"]
    busy, covered_to, idle_before = 0.0, rows[0]["start"], []
    for r in rows:
        gap = max(0.0, r["start"] - covered_to)
        idle_before.append(gap)
        if r["end"] > covered_to:
            busy += r["end"] - max(r["start"], covered_to)
            covered_to = r["end"]
    print(f"{len(rows)} kernels over {span:.1f} us; some kernel running {busy:.1f} us ({100 * busy / span:.1f} %), "
          f"none {span - busy:.1f} us")
    print(f"direct launches (not in a graph): {sum(1 for r in rows if r['graph'] == '0')}")

    by_name = defaultdict(lambda: [0, 0.0, 0.0])
    for r, gap in zip(rows, idle_before):
        e = by_name[r["short"]]
        e[0] += 1
        e[1] += r["end"] - r["start"]
        e[2] += gap
    print(f"\n| kernel | calls | total us | per call us | idle before it, total us |\n|---|---:|---:|---:|---:|")
    for name, (n, total, gap) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[: a.top]:
        print(f"| {name} | {n} | {total:.1f} | {total / n:.2f} | {gap:.1f} |")

    if a.halves:
        print_half_steps(rows)

    if a.timeline:
        first, count = (int(x) for x in a.timeline.split(":"))
        print("\n| # | stream | graph | start us | duration us | idle before us | kernel |\n|---:|---:|---:|---:|---:|---:|---|")
        for i in range(first, min(first + count, len(rows))):
            r = rows[i]
            print(f"| {i} | {r['stream']} | {r['graph']} | {r['start']:.2f} | {r['end'] - r['start']:.2f} | "
                  f"{idle_before[i]:.2f} | {r['short']} |")


if __name__ == "__main__":
    main()
