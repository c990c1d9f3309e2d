#!/usr/bin/env bash
# Throughput under LLM faults: Coral (400 tasks, 200 in flight by default)
# against two standalone simulators with the same seed, one healthy and one
# injecting about 30 % faults (10 % 429 with Retry-After 2 s, 5 % 500, 5 % 503,
# 3 % hangs cut by a 20 s timeout, 4 % dropped connections, 3 % garbage
# bodies), run alternately. Prints completion tokens/s of each, their ratio,
# how the tasks ended and what share of HTTP attempts were retries.
#   bench/faults.sh [pairs] [extra overrides]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-$ROOT/build/release/bin}"
PAIRS="${1:-1}"; shift || true
EXTRA=("$@")
WORK="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

start_sim() {  # name, extra flags...
  local name=$1; shift
  "$BIN/matrix-llm-sim" --listen 127.0.0.1:0 --port-file "$WORK/$name.port" --fault-seed 7 "$@" \
    >"$WORK/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [[ -s "$WORK/$name.port" ]] && break; sleep 0.1; done
  tr -d '\n ' <"$WORK/$name.port"
}
healthy=$(start_sim healthy)
faulty=$(start_sim faulty --fault-429 0.10 --retry-after-s 2 --fault-500 0.05 --fault-503 0.05 \
  --fault-hang 0.03 --fault-drop 0.04 --fault-malformed 0.03)

run() {  # label, host:port
  local out="$WORK/out-$1-$RANDOM"
  "$BIN/matrix" run "$ROOT/configs/coral.yaml" dataset.limit=400 run.max_concurrent_tasks=200 \
    "models.llama.endpoints=[http://$2/v1]" models.llama.timeout_s=20 models.llama.max_retries=8 "${EXTRA[@]}" \
    --output "$out" --run-dir "$out.run" --quiet >/dev/null 2>&1 || true
  python3 - "$1" "$out" "$out.run" <<'PY'
import glob, json, sys
label, out, run = sys.argv[1:]
s = json.load(open(f"{out}/summary.json"))
calls = attempts = 0
for f in glob.glob(f"{run}/progress/*.json"):
    p = json.load(open(f))
    calls += p.get("llm_calls", 0); attempts += p.get("llm_attempts", 0)
tps = s["completion_tokens"] / s["elapsed_s"]
retried = (attempts - calls) / attempts * 100 if attempts else 0
print(f"{label:8} {s['elapsed_s']:7.1f} s  {tps:8.0f} completion tok/s  by status {json.dumps(s['by_status'])}"
      f"  LLM calls {calls}, attempts {attempts} ({retried:.1f} % retries)")
open(f"{out}.tps", "w").write(str(tps))
PY
  cat "$out.tps" >>"$WORK/$1.all"; echo >>"$WORK/$1.all"
}
for _ in $(seq "$PAIRS"); do
  run healthy "$healthy"
  run faulty "$faulty"
done
python3 - "$WORK" <<'PY'
import statistics, sys
w = sys.argv[1]
h = [float(x) for x in open(f"{w}/healthy.all").read().split()]
f = [float(x) for x in open(f"{w}/faulty.all").read().split()]
print(f"median completion tok/s: healthy {statistics.median(h):.0f}, ~30 % faults {statistics.median(f):.0f}"
      f" = {statistics.median(f) / statistics.median(h):.2f} of healthy")
PY
