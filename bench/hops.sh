#!/usr/bin/env bash
# Agent hops per second and per-hop latency of the runtime itself: the no-op
# pipeline (configs/noop.yaml, ~2 KB messages, 100 hops per task) through real
# broker and worker processes. Usage: bench/hops.sh [trials] [extra overrides]
# Prints hops/s over the run, CPU time per hop, and the per-hop latency (queue wait + handling)
# percentiles from the records' spans.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-$ROOT/build/release/bin}"
TRIALS="${1:-50}"; shift || true
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# CPU time of the whole process tree (matrix reaps its daemons, so their
# usage is counted): a steadier figure than hops/s on a shared machine.
/usr/bin/env python3 - "$BIN/matrix" "$ROOT/configs/noop.yaml" "$TRIALS" "$OUT" "$@" <<'PY'
import json, os, resource, subprocess, sys, glob
matrix, pipeline, trials, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
subprocess.run([matrix, "run", pipeline, f"run.trials={trials}", *extra, "--output", out, "--quiet"], check=True, stdout=sys.stderr)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu_s = ru.ru_utime + ru.ru_stime
s = json.load(open(f"{out}/summary.json"))
hops, lat = 0, []
first, last = None, None
for path in glob.glob(f"{out}/p*.jsonl"):
    for line in open(path):
        r = json.loads(line)
        hops += r["counters"].get("steps", 0)
        for sp in r["spans"]:
            lat.append(sp["end_us"] - sp["enqueue_us"])
            first = sp["enqueue_us"] if first is None else min(first, sp["enqueue_us"])
            last = sp["end_us"] if last is None else max(last, sp["end_us"])
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0
span_s = (last - first) / 1e6
print(f"tasks {s['records']}  hops {hops}  message ~2 KB")
print(f"hops/s (first enqueue to last step end): {hops / span_s:,.0f}  over {span_s:.2f} s")
print(f"hops/s (whole command incl. start/stop): {hops / s['elapsed_s']:,.0f}")
print(f"CPU per hop (all processes, user+sys): {cpu_s / hops * 1e6:.2f} us  ({cpu_s:.1f} s CPU)")
print(f"per-hop latency enqueue->end: p50 {pct(0.5)} us  p90 {pct(0.9)} us  p99 {pct(0.99)} us")
PY
