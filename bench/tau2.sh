#!/usr/bin/env bash
# Tau2 retail with many tasks in flight on a standalone simulator: how fast
# tool environments start and answer, how many live at once and what they
# cost. Usage: bench/tau2.sh [tasks in flight] [extra overrides]
# (default 1000 in flight, 114 tasks x 9 trials = 1,026 tasks).
# Prints sessions started per second, tool calls per second, peak live
# sessions and their resident memory, and CPU time per tool call of the
# matrix process tree (broker, store, worker and every sandbox, which the
# worker reaps) - the simulator runs as a separate process and is not counted.
# SIM_FLAGS adds simulator flags, e.g. SIM_FLAGS="--speed 10 --prefill-tokens-per-s 5000000"
# so that the model is not what limits the tool loop.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-$ROOT/build/release/bin}"
INFLIGHT="${1:-1000}"; shift || true
OUT="$(mktemp -d)"
SIM_LOG="$OUT/sim.log"
"$BIN/matrix-llm-sim" --listen 127.0.0.1:0 --port-file "$OUT/sim.port" --metrics '' --slots 4096 --step-ms 8 \
  --step-ms-per-seq 0.01 --mean-output-tokens 60 --tool-call-prob 0.5 ${SIM_FLAGS:-} >"$SIM_LOG" 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null; rm -rf "$OUT"' EXIT
for _ in $(seq 100); do [[ -s "$OUT/sim.port" ]] && break; sleep 0.1; done
URL="http://$(cat "$OUT/sim.port")/v1"
/usr/bin/env python3 - "$BIN/matrix" "$ROOT/configs/tau2_retail.yaml" "$INFLIGHT" "$OUT" "$URL" "$SIM" "$@" <<'PY'
import glob, json, os, resource, subprocess, sys, threading, time
matrix, pipeline, inflight, out, url, sim_pid, extra = (sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4],
                                                       sys.argv[5], sys.argv[6], sys.argv[7:])

def cpu_of(pid):  # user+sys seconds of a live process
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def machine_busy():  # (busy, total, stolen) jiffies of all CPUs
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
    return busy, busy + v[3] + v[4] + v[7], v[7]
trials = max(1, -(-inflight // 114))
cmd = [matrix, "run", pipeline, f"run.trials={trials}", f"run.max_concurrent_tasks={inflight}",
       f"models.assistant.endpoints=[{url}]", f"models.user.endpoints=[{url}]", *extra,
       "--output", f"{out}/run", "--quiet"]
peak = {"live": 0, "rss_kb": 0, "rss_at_peak_kb": 0}
done = threading.Event()

def sample():
    # Sandbox processes: bwrap and the environment's Python, by command line.
    while not done.is_set():
        live, rss = 0, 0
        for stat in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                cmdline = open(stat, "rb").read()
                if b"tau2_env.py" not in cmdline:
                    continue
                pid_dir = os.path.dirname(stat)
                for line in open(pid_dir + "/status"):
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                if cmdline.startswith(b"/usr/bin/python3"):
                    live += 1
            except OSError:
                pass
        if live > peak["live"]:
            peak["live"], peak["rss_at_peak_kb"] = live, rss
        peak["rss_kb"] = max(peak["rss_kb"], rss)
        time.sleep(0.5)

t = threading.Thread(target=sample, daemon=True)
t.start()
start = time.time()
sim0, m0 = cpu_of(sim_pid), machine_busy()
rc = subprocess.run(cmd, stdout=sys.stderr).returncode
if rc not in (0, 3):  # 3: every task written, some failed (counted below)
    sys.exit(f"matrix run exited {rc}")
wall = time.time() - start
sim_cpu, m1 = cpu_of(sim_pid) - sim0, machine_busy()
busy = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
stolen = (m1[2] - m0[2]) / max(1, m1[1] - m0[1])
done.set()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu_s = ru.ru_utime + ru.ru_stime
records = [json.loads(l) for p in glob.glob(f"{out}/run/p*.jsonl") for l in open(p)]
tool_calls = sum(r["counters"].get("tool_calls", 0) for r in records)
llm_calls = sum(r["counters"].get("llm_calls", 0) for r in records)
reasons = {}
for r in records:
    reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
progress = [json.load(open(p)) for p in glob.glob(f"{out}/run/../**/progress/*.json", recursive=True)]
first = min(r["created_us"] for r in records)
last = max(r["finished_us"] for r in records)
span = (last - first) / 1e6
sessions = sum(1 for r in records if r["counters"].get("tool_calls", 0) > 0 or "reward" in r["vars"])
rewards = [r["vars"]["reward"] for r in records if isinstance(r["vars"].get("reward"), (int, float))]
print(f"tasks {len(records)} ({trials} trials), {inflight} in flight; reasons {reasons}")
print(f"first admission to last record: {span:.1f} s (whole command {wall:.1f} s)")
print(f"environment sessions: {sessions} ({sessions / span:.1f} started/s)")
print(f"tool calls: {tool_calls} ({tool_calls / span:.1f}/s); LLM calls {llm_calls} ({llm_calls / span:.1f}/s)")
print(f"peak live sessions (environment processes seen): {peak['live']}; their RSS then "
      f"{peak['rss_at_peak_kb'] / 1024:.0f} MB ({peak['rss_at_peak_kb'] / max(1, peak['live']) / 1024:.1f} MB per session,"
      f" bwrap included); peak RSS of all sandboxes {peak['rss_kb'] / 1024:.0f} MB")
print(f"CPU of the matrix tree (daemons + sandboxes, user+sys): {cpu_s:.1f} s = "
      f"{cpu_s / max(1, tool_calls) * 1e3:.2f} ms per tool call, {cpu_s / max(1, sessions) * 1e3:.1f} ms per session")
print(f"simulator CPU {sim_cpu:.1f} s; the machine's CPUs were {busy * 100:.0f} % busy over the run "
      f"({stolen * 100:.0f} % taken by other virtual machines)")
print(f"mean reward {sum(rewards) / max(1, len(rewards)):.3f} over {len(rewards)} episodes")
PY
