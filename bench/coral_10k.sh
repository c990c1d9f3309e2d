#!/usr/bin/env bash
# Coral at 10,000 concurrent tasks on the simulator: 2,000 questions x 5
# trials = 10,000 tasks, all admitted at once. Usage: bench/coral_10k.sh [overrides]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-$ROOT/build/release/bin}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
/usr/bin/time -f "wall %e s, max RSS of matrix %M KB" \
  "$BIN/matrix" run "$ROOT/configs/coral.yaml" run.trials=5 run.max_concurrent_tasks=10000 \
  simulator.slots=4096 models.llama.max_concurrency_per_endpoint=10000 "$@" --output "$OUT"
/usr/bin/env python3 - "$OUT" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
print(f"records {s['records']} unique {s['unique_tasks']} duplicates {s['duplicates']} by_status {s['by_status']}")
print(f"completion tok/s {s['completion_tokens_per_s']:,.0f}  prompt tok/s {s['prompt_tokens_per_s']:,.0f}  elapsed {s['elapsed_s']:.1f} s  agreement {s['rates'].get('agreement', 0):.3f}")
PY
