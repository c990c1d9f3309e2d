#!/usr/bin/env bash
# A Matrix pipeline over a real 3-node SLURM cluster (cluster.sh), submitted
# with the repository's job scripts as a researcher would:
#   a. two simulator model servers (slurm/model_server.sbatch --engine sim, 2
#      nodes), then Coral over 3 nodes (slurm/matrix.sbatch);
#   b. mid-run one simulator is killed (kill -9): it is unregistered, restarted
#      on the same host:port and registered again; the run completes;
#   c. every node ran a broker, a store and workers; tasks crossed nodes
#      (broker forwards/steals) and objects were fetched from another node's
#      store (metrics scraped from the Prometheus targets of every node); the
#      target files list every daemon of every node; every task has exactly one
#      record;
#   d. scancel of a second, bigger run: the daemons drain and the job exits
#      0:0 within the grace period, records are whole JSON lines; submitted
#      again on the same run directory it resumes, drains again on a SIGTERM to
#      the batch shell alone (what --signal=B:TERM@120 sends before the time
#      limit), and a third submission completes with every task once;
#   e. a client without the job's keys (ZMTP NULL, and CURVE with a key pair
#      of its own) connecting to a broker from another node is refused and
#      counted (matrix_broker_auth_failures_total).
# Binaries: $MATRIX_BIN, else build/release/bin of this repository.
# Exit 0: pass, 77: skipped (not root, or SLURM/munge/iproute2 missing), else fail.
# KEEP_SLURM_DIR=1 keeps the cluster directory (configs, logs, run dirs) after a failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLUSTER=$HERE/cluster.sh
BIN=$(realpath -m "${MATRIX_BIN:-$ROOT/build/release/bin}")
PIPELINE=$ROOT/configs/coral.yaml

# shellcheck source-path=SCRIPTDIR source=test_lib.sh
source "$HERE/test_lib.sh"

[[ $(id -u) -eq 0 ]] || skip "needs root (network namespaces, bridge, slurmd as root)"
for tool in slurmctld slurmd munged mungekey sbatch srun scancel squeue scontrol ip nsenter unshare curl python3; do
  command -v "$tool" >/dev/null || skip "'$tool' not installed (apt-get install -y slurm-wlm munge iproute2 curl)"
done
for b in matrix matrix-broker matrix-store matrix-worker matrix-llm-sim; do
  [[ -x $BIN/$b ]] || fail "no $BIN/$b (build first, or set MATRIX_BIN)"
done
usage=$("$BIN/matrix" 2>&1 || true)
[[ $usage == *"matrix node"* && $usage == *"matrix keys"* ]] || fail "$BIN/matrix has no 'node' and 'keys' commands"

# Simulator: Coral's simulator section, 2x faster.
SIM_ARGS=(--slots 2048 --step-ms 8 --step-ms-per-seq 0.01 --mean-output-tokens 120 --agree-prob 0.6 --speed 2)
MODEL_NAME=meta-llama/Llama-3.1-8B-Instruct
# Run 1 is uneven on purpose: 4 partitions over 3 nodes (n1 gets two), and the
# LLM roles take 4 tasks at a time per worker, so that n1's queues outgrow its
# workers' credit and the other nodes' brokers take tasks from it. (With
# Coral's default concurrency of 4096 every node keeps up with its own work
# and nothing needs to cross.)
RUN1_TASKS=400
RUN1_OVERRIDES=("dataset.limit=$RUN1_TASKS" dataset.partitions=4 run.max_concurrent_tasks=25
  roles.teacher.concurrency=4 roles.student.concurrency=4 roles.extractor.concurrency=4)
RUN2_TASKS=900
RUN2_OVERRIDES=("dataset.limit=$RUN2_TASKS" dataset.partitions=6 run.max_concurrent_tasks=30)
GRACE_S=10
export MATRIX_BIN=$BIN MATRIX_GRACE_S=$GRACE_S
export MATRIX_MODEL_RESTART_DELAY_S=8 MATRIX_MODEL_GRACE_S=5
export MATRIX_SLURM_KILL_WAIT=30

failure_logs() {
  echo "== last lines of the job outputs and node logs" >&2
  tail -n 25 "$DIR"/shared/*.out >&2 2>/dev/null || true
  tail -n 8 "$DIR"/shared/run*/nodes/*/logs/* >&2 2>/dev/null || true
  tail -n 5 "$DIR"/shared/run*/model_servers/*/*/*.log >&2 2>/dev/null || true
}
make_cluster_dir mxrun

wait_running() {
  local deadline=$(($(date +%s) + $2)) state
  while :; do
    state=$(job_field "$1" JobState)
    case $state in
      RUNNING) return 0 ;;
      PENDING | CONFIGURING | "") ;;
      *) fail "job $1 is $state, expected RUNNING" ;;
    esac
    (($(date +%s) < deadline)) || fail "job $1 not running after $2 s"
    sleep 0.2
  done
}
# wait_for TIMEOUT WHAT CMD...: polls CMD until it succeeds.
wait_for() {
  local timeout=$1 what=$2 deadline
  deadline=$(($(date +%s) + timeout))
  shift 2
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || fail "$what: not after $timeout s"
    sleep 0.2
  done
}
# has_file DIR WORD: DIR holds a file whose name contains WORD.
has_file() { compgen -G "$1/*$2*" >/dev/null; }
records() { cat "$1"/output/*.jsonl 2>/dev/null | wc -l; }
records_at_least() { (($(records "$1") >= $2)); }
count_files() { find "$1" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l; }
n_files() { (($(count_files "$1") == $2)); }
gone() { [[ ! -e $1 ]]; }
node_state() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$1"; }
names() { find "$1" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null | tr -s ' '; }

# ------------------------------------------------------------------ helpers in python
TOOLS=$DIR/tools
mkdir -p "$TOOLS"
# metrics.py sample STATE NODE TARGETS_JSON SCRAPE_OUTPUT: folds one scrape of
#   a node's targets into STATE (per target and metric: the largest value seen,
#   counters being monotonic while a daemon lives).
# metrics.py sum STATE REGEX [DAEMON]: sum over targets of the metrics whose
#   name matches REGEX (prints 0 when none; "none" when no such metric exists).
cat >"$TOOLS/metrics.py" <<'EOF'
import json, os, re, sys

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}

def save(path, state):
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)

cmd = sys.argv[1]
if cmd == "sample":
    state_path, node, scrape_path = sys.argv[2:5]
    state = load(state_path)
    target = None
    with open(scrape_path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("# TARGET "):
                _, _, target, daemon = line.split(" ", 3)
                key = f"{node}|{daemon}|{target}"
                state.setdefault(key, {})
                continue
            if not line or line.startswith("#") or target is None:
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if not m:
                continue
            try:
                v = float(m.group(3))
            except ValueError:
                continue
            name = m.group(1)
            per = state[key]
            per[name] = per.get(name, 0.0)
            per.setdefault("_cur", {})
            cur = per["_cur"]
            cur[name] = cur.get(name, 0.0) + v
    for key, per in state.items():
        cur = per.pop("_cur", {})
        for name, v in cur.items():
            per[name] = max(per.get(name, 0.0), v)
    save(state_path, state)
elif cmd == "sum":
    state = load(sys.argv[2])
    rx = re.compile(sys.argv[3])
    daemon = sys.argv[4] if len(sys.argv) > 4 else None
    total, seen = 0.0, False
    for key, per in state.items():
        if daemon and key.split("|")[1] != daemon:
            continue
        for name, v in per.items():
            if rx.fullmatch(name):
                seen = True
                total += v
    print(f"{total:g}" if seen else "none")
EOF
# targets.py FILE NODE: checks a node's Prometheus file-SD list and prints
#   "TARGET DAEMON" per target; fails unless broker, store and worker are there.
cat >"$TOOLS/targets.py" <<'EOF'
import json, sys
path, node = sys.argv[1:3]
with open(path) as f:
    groups = json.load(f)
assert isinstance(groups, list), f"{path}: not a list"
kinds = set()
for g in groups:
    assert isinstance(g.get("targets"), list) and g["targets"], f"{path}: group without targets: {g}"
    labels = g.get("labels", {})
    daemon = labels.get("daemon", "?")
    assert labels.get("node") in (None, node) or labels.get("node"), f"{path}: bad node label {labels}"
    kinds.add(daemon)
    for t in g["targets"]:
        host, _, port = t.rpartition(":")
        assert host and port.isdigit(), f"{path}: bad target {t}"
        print(t, daemon, labels.get("node", ""), labels.get("process", ""))
missing = {"broker", "store", "worker"} - kinds
assert not missing, f"{path}: no {sorted(missing)} target (daemons: {sorted(kinds)})"
EOF
# records.py OUTPUT_DIR EXPECTED [--partial]: every line is a JSON object with a
#   task_id; no task twice; with EXPECTED tasks all present (r1.t0 ...), unless
#   --partial. Prints counts by status.
cat >"$TOOLS/records.py" <<'EOF'
import collections, glob, json, os, sys
out, expected = sys.argv[1], int(sys.argv[2])
partial = "--partial" in sys.argv[3:]
ids = collections.Counter()
status = collections.Counter()
files = sorted(glob.glob(os.path.join(out, "*.jsonl")))
assert files, f"no *.jsonl in {out}"
for path in files:
    with open(path, "rb") as f:
        data = f.read()
    assert not data or data.endswith(b"\n"), f"{path}: last line is not terminated"
    for n, line in enumerate(data.splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError as e:
            sys.exit(f"{path}:{n}: not JSON ({e}): {line[:120]!r}")
        assert isinstance(rec, dict) and "task_id" in rec, f"{path}:{n}: no task_id"
        ids[rec["task_id"]] += 1
        status[rec.get("status", "?")] += 1
dups = {k: v for k, v in ids.items() if v > 1}
print(f"{sum(ids.values())} records, {len(ids)} tasks, {len(dups)} duplicated, by status {dict(status)}, {len(files)} files")
assert not dups, f"duplicated tasks: {list(dups.items())[:10]}"
# task ids are r<row>.t<trial>, rows numbered from 1 (the dataset's lines)
want = {f"r{i}.t0" for i in range(1, expected + 1)}
extra = set(ids) - want
assert not extra, f"unexpected task ids: {sorted(extra)[:10]}"
if not partial:
    missing = want - set(ids)
    assert not missing, f"{len(missing)} tasks without a record: {sorted(missing)[:10]}"
    bad = {k: v for k, v in status.items() if k not in ("done",)}
    assert not bad, f"records not done: {bad}"
else:
    assert len(ids) < expected, f"all {expected} tasks already have a record: the run was not interrupted"
EOF
# drain_check.py NODE_DIR SINCE: the node's daemons drained after a SIGTERM at
#   SINCE (UTC, ISO 8601): no worker gave up its drain ("second signal"), and
#   the broker and the store stopped only after the workers had stopped.
cat >"$TOOLS/drain_check.py" <<'EOF'
import glob, os, re, sys
node_dir, since = sys.argv[1], sys.argv[2]
stamp = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")
def lines(path):
    try:
        f = open(path, errors="replace")
    except OSError:
        return []
    out = []
    with f:
        for line in f:
            m = stamp.match(line)
            if m and m.group(1) >= since:
                out.append((m.group(1), line.rstrip("\n")))
    return out
problems, worker_end = [], ""
workers = sorted(glob.glob(os.path.join(node_dir, "logs", "worker-*.log")))
for w in workers:
    for t, line in lines(w):
        if "second signal" in line:
            problems.append(f"{os.path.basename(w)}: {line}")
        if "worker stopped" in line:
            worker_end = max(worker_end, t)
if not worker_end:
    problems.append(f"no 'worker stopped' after {since} in {', '.join(map(os.path.basename, workers))}")
for daemon, word in (("broker", "stopping"), ("store", "shutting down")):
    for t, line in lines(os.path.join(node_dir, "logs", daemon + ".log")):
        if word in line:
            if worker_end and t < worker_end:
                problems.append(f"{daemon}.log: {line}  <- before the workers stopped ({worker_end})")
            break
for p in problems:
    print(f"{os.path.basename(node_dir)}: {p}")
sys.exit(1 if problems else 0)
EOF
# zmtp_probe.py HOST PORT null|curve: connects like a ZeroMQ peer without the
#   job's keys (ZMTP 3.0 greeting with the NULL mechanism and a READY, or the
#   CURVE mechanism with a HELLO from a key pair of its own). Prints the
#   server's mechanism and what happened; exit 0 when the server closed the
#   connection without a READY/WELCOME.
cat >"$TOOLS/zmtp_probe.py" <<'EOF'
import os, socket, struct, sys, time
host, port, mech = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=5)
s.settimeout(5)
greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + mech.upper().encode().ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
assert len(greeting) == 64
s.sendall(greeting)
if mech == "null":
    props = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + props
else:
    # HELLO: version 1.0, 72 bytes padding, a transient public key, a short
    # nonce and a signature box that the server cannot open.
    body = b"\x05HELLO" + b"\x01\x00" + b"\x00" * 72 + os.urandom(32) + struct.pack(">Q", 1) + os.urandom(80)
s.sendall(bytes([0x04, len(body)]) + body)
data, closed, how = b"", False, ""
deadline = time.time() + 5
try:
    while time.time() < deadline:
        chunk = s.recv(4096)
        if not chunk:
            closed, how = True, "closed (EOF)"
            break
        data += chunk
except ConnectionResetError:
    closed, how = True, "closed (reset)"
except socket.timeout:
    how = "still open after 5 s"
server_mech = data[12:32].rstrip(b"\x00").decode(errors="replace") if len(data) >= 32 else "?"
accepted = b"\x05READY" in data[64:] or b"\x07WELCOME" in data[64:]
print(f"{mech}: server mechanism {server_mech}, {len(data)} bytes received, {how}, "
      f"{'ACCEPTED' if accepted else 'no READY/WELCOME'}")
sys.exit(0 if closed and not accepted else 1)
EOF

# ------------------------------------------------------------------ up
step "up: 3 nodes in $DIR"
t0=$(now)
"$CLUSTER" up "$DIR" 3 || fail "cluster.sh up failed (its messages above)"
echo "up in $(since "$t0") s"
# shellcheck source=/dev/null
source "$DIR/env.sh"
SHARED=$MATRIX_SLURM_SHARED
ip_of() { local v=MATRIX_SLURM_IP_$1; echo "${!v}"; }

# targets_file RUN NODE: the node's Prometheus file-SD list, RUN/prometheus/node-<node>.json
# (read by a Prometheus job over prometheus/*.json), or RUN/nodes/<node>/prometheus/targets.json.
targets_file() {
  if [[ -e $1/prometheus/node-$2.json ]]; then
    echo "$1/prometheus/node-$2.json"
  else
    echo "$1/nodes/$2/prometheus/targets.json"
  fi
}
# scrape_all RUN STATE: every node's targets.json, scraped from inside the node.
scrape_all() {
  local run=$1 state=$2 node tf targets
  for node in $MATRIX_SLURM_NODES; do
    tf=$(targets_file "$run" "$node")
    [[ -s $tf ]] || continue
    targets=$(python3 "$TOOLS/targets.py" "$tf" "$node" 2>/dev/null | awk '{ print $1 "=" $2 }') || continue
    # shellcheck disable=SC2016,SC2086  # expanded inside the node; one target per word
    on-node "$node" bash -c 'for t in "$@"; do echo "# TARGET ${t%%=*} ${t#*=}"; curl -s -m 2 "http://${t%%=*}/metrics"; done' \
      scrape $targets >"$TOOLS/scrape.$node" 2>/dev/null || true
    python3 "$TOOLS/metrics.py" sample "$state" "$node" "$TOOLS/scrape.$node"
  done
}
metric() { python3 "$TOOLS/metrics.py" sum "$@"; }

# ------------------------------------------------------------------ a. model servers
RUN1=$SHARED/run1
step "a. two simulator model servers: sbatch -N2 slurm/model_server.sbatch $RUN1 llama --engine sim"
ms1=$(sbatch --parsable -N2 -D "$SHARED" -o "$SHARED/models1.out" "$ROOT/slurm/model_server.sbatch" \
  "$RUN1" llama --engine sim --model "$MODEL_NAME" -- "${SIM_ARGS[@]}")
t0=$(now)
wait_for 60 "two registered model servers in $RUN1/models/llama" n_files "$RUN1/models/llama" 2
echo "registered in $(since "$t0") s: $(cd "$RUN1/models/llama" && for f in *; do echo -n "$f=$(cat "$f") "; done)"
for f in "$RUN1"/models/llama/*; do
  url=$(cat "$f")
  [[ $url =~ ^http://([^:/]+):([0-9]+)/v1$ ]] || fail "registration $f holds '$url'"
  [[ $(basename "$f") == "${BASH_REMATCH[1]}_${BASH_REMATCH[2]}" ]] || fail "registration $f does not match its URL $url"
  on-node n3 curl -sS -m 5 -o /dev/null "$url/models" || fail "model server $url does not answer from n3"
done

step "a. Coral over 3 nodes: sbatch -N3 slurm/matrix.sbatch $RUN1 coral.yaml ${RUN1_OVERRIDES[*]}"
main1=$(sbatch --parsable -N3 -D "$SHARED" -o "$SHARED/main1.out" "$ROOT/slurm/matrix.sbatch" \
  "$RUN1" "$PIPELINE" "${RUN1_OVERRIDES[@]}")
t_main1=$(now)
wait_running "$main1" 60
[[ $(stat -c %a "$RUN1") == 700 ]] || fail "$RUN1 has mode $(stat -c %a "$RUN1"), expected 700"
wait_for 60 "job key $RUN1/keys/job.key" test -s "$RUN1/keys/job.key"
[[ $(stat -c %a "$RUN1/keys/job.key") == 600 && $(stat -c %a "$RUN1/keys") == 700 ]] ||
  fail "key modes: $(stat -c '%n %a' "$RUN1/keys" "$RUN1/keys/job.key")"

# every node publishes its daemons' endpoints and scrape targets
all_targets_ready() {
  local node
  for node in $MATRIX_SLURM_NODES; do
    [[ -s $RUN1/nodes/$node/endpoints/broker ]] || return 1
    python3 "$TOOLS/targets.py" "$(targets_file "$RUN1" "$node")" "$node" >/dev/null || return 1
  done
}
wait_for 90 "endpoints and Prometheus targets of all 3 nodes" all_targets_ready
echo "daemons up $(since "$t_main1") s after submit"
STATE1=$TOOLS/metrics1.json
for node in $MATRIX_SLURM_NODES; do
  echo "$node endpoints: $(names "$RUN1/nodes/$node/endpoints")"
  has_file "$RUN1/nodes/$node/endpoints" store || fail "no store endpoint on $node"
  has_file "$RUN1/nodes/$node/endpoints" worker || fail "no worker endpoint on $node"
  echo "$node targets: $(targets_file "$RUN1" "$node")"
  python3 "$TOOLS/targets.py" "$(targets_file "$RUN1" "$node")" "$node" | sed "s/^/$node target: /"
  n_workers=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["workers"])' "$RUN1/nodes/$node/node.json") ||
    fail "$RUN1/nodes/$node/node.json: no JSON with the node's workers"
  n_targets=$(python3 "$TOOLS/targets.py" "$(targets_file "$RUN1" "$node")" "$node" | awk '$2 == "worker"' | wc -l)
  ((n_targets == n_workers)) || fail "$node runs $n_workers workers, its targets list $n_targets"
done
scrape_all "$RUN1" "$STATE1"

# ------------------------------------------------------------------ e. refused without the keys
step "e. clients without the job's keys connect to n1's broker from n3"
broker_ep=$(head -n 1 "$RUN1/nodes/n1/endpoints/broker")
[[ $broker_ep =~ ^tcp://([0-9.]+):([0-9]+)$ ]] || fail "n1 broker endpoint '$broker_ep' is not tcp://ip:port"
b_ip=${BASH_REMATCH[1]} b_port=${BASH_REMATCH[2]}
[[ $b_ip == "$(ip_of n1)" ]] || fail "n1's broker is bound to $b_ip, not n1's address $(ip_of n1)"
auth_before=$(metric "$STATE1" 'matrix_(broker_)?auth_failures_total' broker)
[[ $auth_before != none ]] || fail "no matrix_broker_auth_failures_total metric on the brokers"
on-node n3 python3 "$TOOLS/zmtp_probe.py" "$b_ip" "$b_port" null || fail "a NULL-mechanism client was not refused by $broker_ep"
on-node n3 python3 "$TOOLS/zmtp_probe.py" "$b_ip" "$b_port" curve || fail "a CURVE client with a foreign key was not refused by $broker_ep"
refused_counted() {
  scrape_all "$RUN1" "$STATE1"
  awk -v a="$(metric "$STATE1" 'matrix_(broker_)?auth_failures_total' broker)" -v b="$auth_before" 'BEGIN { exit !(a >= b + 2) }'
}
wait_for 15 "matrix_broker_auth_failures_total counting both refused clients" refused_counted
echo "auth failures on the brokers: $auth_before -> $(metric "$STATE1" 'matrix_(broker_)?auth_failures_total' broker)"
grep -h "refused" "$RUN1"/nodes/n1/logs/* 2>/dev/null | tail -n 2 || true

# ------------------------------------------------------------------ b. kill a model server mid-run
step "b. kill -9 of a simulator mid-run"
wait_for 120 "first 40 records of run 1" records_at_least "$RUN1" 40
pidfiles=("$RUN1"/model_servers/llama/job"$ms1"/*-g0.pid)
pidfile=${pidfiles[0]}
[[ -f $pidfile ]] || fail "no simulator pid file in $RUN1/model_servers/llama/job$ms1"
victim_node=$(basename "$pidfile" -g0.pid)
victim_pid=$(cat "$pidfile")
reg=$(cat "${pidfile%.pid}.registered")
grep -q matrix-llm-sim "/proc/$victim_pid/cmdline" || fail "pid $victim_pid of $pidfile is not a simulator"
echo "killing the simulator on $victim_node (pid $victim_pid, $(basename "$reg")) at $(records "$RUN1") records"
kill -9 "$victim_pid"
t_kill=$(now)
wait_for 10 "unregistration of the killed simulator" gone "$reg"
echo "unregistered after $(since "$t_kill") s"
wait_for 60 "re-registration of the restarted simulator" test -e "$reg"
new_pid=$(cat "$pidfile")
[[ $new_pid != "$victim_pid" ]] || fail "simulator pid unchanged after restart"
n_restart=$(records "$RUN1")
echo "restarted (pid $new_pid) and registered again as $(basename "$reg") after $(since "$t_kill") s, at $n_restart records"
((n_restart < RUN1_TASKS)) || fail "run 1 ended before the simulator came back: make it longer"
on-node n3 curl -sS -m 5 -o /dev/null "$(cat "$reg")/models" || fail "restarted simulator does not answer"

# ------------------------------------------------------------------ completion
step "a/b. waiting for run 1 to complete"
state=$(wait_job "$main1" 300 5 scrape_all "$RUN1" "$STATE1")
echo "run 1: $state, exit $(job_field "$main1" ExitCode), $(since "$t_main1") s after submit"
[[ $state == COMPLETED && $(job_field "$main1" ExitCode) == 0:0 ]] ||
  fail "run 1 job $main1 ended $state exit $(job_field "$main1" ExitCode)"
python3 "$TOOLS/records.py" "$RUN1/output" "$RUN1_TASKS" || fail "run 1 records"
# the workers went back to the restarted simulator: it answered more than the
# readiness probe (its /metrics, on the node's loopback, from its log)
sim_metrics=$(grep -o 'metrics at http://[0-9.:]*/metrics' "${pidfile%.pid}.log" | tail -n 1 | cut -d' ' -f3)
if [[ -n $sim_metrics ]]; then
  sim_requests=$(on-node "$victim_node" curl -s -m 5 "$sim_metrics" |
    awk '/^matrix_sim_requests_total/ { n += $NF } END { print n + 0 }')
  echo "restarted simulator answered $sim_requests requests"
  ((sim_requests > 1)) || fail "no request reached the restarted simulator after it was registered again"
else
  echo "restarted simulator publishes no metrics address in its log; not checking its requests"
fi

# ------------------------------------------------------------------ c. every node, crossings
step "c. daemons on every node, cross-node traffic"
for node in $MATRIX_SLURM_NODES; do
  logs=$RUN1/nodes/$node/logs
  for d in broker store worker; do
    has_file "$logs" "$d" || fail "no $d log in $logs ($(names "$logs"))"
  done
  st=$(node_state "$RUN1/nodes/$node/node.json") || fail "$RUN1/nodes/$node/node.json: no JSON with a state"
  [[ $st == finished ]] || fail "$node's node.json says '$st', expected finished"
  n_targets=$(python3 - "$STATE1" "$node" <<'EOF'
import json, sys
state, node = json.load(open(sys.argv[1])), sys.argv[2]
kinds = {k.split("|")[1] for k, v in state.items() if k.startswith(node + "|") and v}
print(" ".join(sorted(kinds)))
EOF
  )
  echo "$node: logs $(names "$logs"); scraped daemons: $n_targets"
  for d in broker store worker; do
    [[ " $n_targets " == *" $d "* ]] || fail "no metrics scraped from the $d of $node"
  done
done
forwards=$(metric "$STATE1" 'matrix_broker_forward(s|ed)_total' broker)
steals=$(metric "$STATE1" 'matrix_broker_steals_total' broker)
from_peers=$(metric "$STATE1" 'matrix_broker_tasks_from_peers_total' broker)
remote_gets=$(metric "$STATE1" 'matrix_[a-z_]*remote_(gets|fetches)_total')
echo "brokers: forwarded $forwards, stolen $steals, from peers $from_peers; objects fetched from another node's store: $remote_gets"
[[ $forwards != none ]] || fail "no matrix_broker_forwarded_total / matrix_broker_forwards_total metric"
awk -v f="$forwards" -v s="${steals/none/0}" 'BEGIN { exit !(f + s > 0) }' || fail "no task crossed nodes (forwards $forwards, steals $steals)"
[[ $remote_gets != none ]] || fail "no *_remote_gets_total / *_remote_fetches_total metric on any daemon"
awk -v r="$remote_gets" 'BEGIN { exit !(r > 0) }' || fail "no object was fetched from another node's store"

# the model-server job stops on the time-limit signal (SIGTERM to the batch
# shell alone) with exit 0 and removes its registrations
step "model servers of run 1: SIGTERM to the batch shell (time-limit path)"
scancel -b -s TERM "$ms1"
state=$(wait_job "$ms1" 60)
[[ $state == COMPLETED && $(job_field "$ms1" ExitCode) == 0:0 ]] ||
  fail "model-server job $ms1 ended $state exit $(job_field "$ms1" ExitCode)"
(($(count_files "$RUN1/models/llama") == 0)) || fail "registrations left: $(ls "$RUN1/models/llama")"

# ------------------------------------------------------------------ d. scancel, drain, resume
RUN2=$SHARED/run2
# stop_and_check JOB OUT HOW: stops a running pipeline job and checks the
#   drain. HOW: cancel (scancel: SIGTERM to the batch shell and the step, the
#   job ends CANCELLED) or term (scancel -b -s TERM: SIGTERM to the batch shell
#   alone, as --signal=B:TERM@120 before the time limit; the job ends COMPLETED).
stop_and_check() {
  local job=$1 out=$2 how=$3 want since_utc t state t_drain node st left n_drained
  since_utc=$(date -u +%Y-%m-%dT%H:%M:%S.%3N)
  t=$(now)
  if [[ $how == cancel ]]; then
    want=CANCELLED
    echo "scancel $job at $(records "$RUN2") records"
    scancel "$job"
  else
    want=COMPLETED
    echo "scancel -b -s TERM $job at $(records "$RUN2") records"
    scancel -b -s TERM "$job"
  fi
  state=$(wait_job "$job" 90)
  t_drain=$(since "$t")
  echo "job $job: $state, exit $(job_field "$job" ExitCode), ended $t_drain s after the signal (grace $GRACE_S s, KillWait $MATRIX_SLURM_KILL_WAIT s)"
  grep -E "matrix.sbatch: SIGTERM|draining|drained" "$out" || true
  [[ $state == "$want" && $(job_field "$job" ExitCode) == 0:0 ]] ||
    fail "job $job ended $state exit $(job_field "$job" ExitCode), expected $want 0:0"
  awk -v t="$t_drain" -v g="$GRACE_S" 'BEGIN { exit !(t <= g + 8) }' || fail "drain took $t_drain s, grace is $GRACE_S s"
  grep -q "matrix.sbatch: SIGTERM" "$out" || fail "the batch shell of job $job did not see the SIGTERM"
  n_drained=$(grep -c "matrix node n[0-9]* drained" "$out" || true)
  ((n_drained == 3)) || fail "$n_drained of 3 nodes report 'drained' in $out"
  for node in $MATRIX_SLURM_NODES; do
    st=$(node_state "$RUN2/nodes/$node/node.json") || fail "$RUN2/nodes/$node/node.json: no JSON with a state"
    [[ $st == drained ]] || fail "$node's node.json says '$st' after the SIGTERM, expected drained"
    python3 "$TOOLS/drain_check.py" "$RUN2/nodes/$node" "$since_utc" || fail "the daemons of $node did not drain (log lines above)"
  done
  left=$(pgrep -af -- "$RUN2/" | grep -v model_server || true)
  [[ -z $left ]] || fail "processes of run 2 still running after job $job ended: $left"
  python3 "$TOOLS/records.py" "$RUN2/output" "$RUN2_TASKS" --partial || fail "run 2 records after job $job"
}

step "d. second run ($RUN2_TASKS tasks): scancel mid-run, resumed and stopped by SIGTERM to the batch shell, resumed to the end"
ms2=$(sbatch --parsable -N2 -D "$SHARED" -o "$SHARED/models2.out" "$ROOT/slurm/model_server.sbatch" \
  "$RUN2" llama --engine sim --model "$MODEL_NAME" -- "${SIM_ARGS[@]}")
wait_for 60 "two registered model servers in $RUN2/models/llama" n_files "$RUN2/models/llama" 2
main2=$(sbatch --parsable -N3 -D "$SHARED" -o "$SHARED/main2.out" "$ROOT/slurm/matrix.sbatch" \
  "$RUN2" "$PIPELINE" "${RUN2_OVERRIDES[@]}")
wait_for 150 "first 100 records of run 2" records_at_least "$RUN2" 100
stop_and_check "$main2" "$SHARED/main2.out" cancel

step "d. the same command again on $RUN2: resumes; then SIGTERM to its batch shell (time-limit path)"
n_before=$(records "$RUN2")
main3=$(sbatch --parsable -N3 -D "$SHARED" -o "$SHARED/main3.out" "$ROOT/slurm/matrix.sbatch" \
  "$RUN2" "$PIPELINE" "${RUN2_OVERRIDES[@]}")
wait_for 150 "150 more records of run 2" records_at_least "$RUN2" $((n_before + 150))
stop_and_check "$main3" "$SHARED/main3.out" term

step "d. and again: completes"
main4=$(sbatch --parsable -N3 -D "$SHARED" -o "$SHARED/main4.out" "$ROOT/slurm/matrix.sbatch" \
  "$RUN2" "$PIPELINE" "${RUN2_OVERRIDES[@]}")
t0=$(now)
state=$(wait_job "$main4" 300)
echo "resumed run: $state, exit $(job_field "$main4" ExitCode), $(since "$t0") s"
[[ $state == COMPLETED && $(job_field "$main4" ExitCode) == 0:0 ]] ||
  fail "resumed job $main4 ended $state exit $(job_field "$main4" ExitCode)"
python3 "$TOOLS/records.py" "$RUN2/output" "$RUN2_TASKS" || fail "run 2 records after resume"

step "model servers of run 2: scancel"
scancel "$ms2"
state=$(wait_job "$ms2" 60)
[[ $(job_field "$ms2" ExitCode) == 0:0 ]] || fail "model-server job $ms2 ended $state exit $(job_field "$ms2" ExitCode)"
(($(count_files "$RUN2/models/llama") == 0)) || fail "registrations left: $(ls "$RUN2/models/llama")"

echo "PASS"
