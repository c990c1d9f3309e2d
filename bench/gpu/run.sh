#!/usr/bin/env bash
# On the GPU machine: a real model server (../shared/gpu: a random-weight
# Llama-3.1-8B-shaped model behind an OpenAI-compatible API), measured alone
# at CONC clients with prompts like the pipeline's, then `matrix run` of one
# LLM call per row at the same concurrency, alternating PAIRS times; then the
# same rows over 2, 4 and 8 `matrix node`s of this host sharing the server
# (NODES), each node in a network namespace of its own on a bridge, the way
# nodes of a cluster reach each other and the server over a network (NETNS=0,
# or a host that refuses namespaces: loopback, said in the output). Prints
# tables; writes JSON under OUT_DIR.
#
#   bench/gpu/bundle                              # here: binaries + libraries + server scripts
#   bench/gpu/run.sh [BUNDLE_DIR] [OUT_DIR]       # there (CONC=256 ROWS=512 MAX_TOKENS=256 PAIRS=2
#                                                 #        NODES="2 4 8" NETNS=1)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUNDLE="$(cd "${1:-$ROOT/bench/gpu/.bundle}" && pwd)"
OUT_DIR="${2:-/tmp/matrix-gpu}"
CONC="${CONC:-256}" ROWS="${ROWS:-512}" MAX_TOKENS="${MAX_TOKENS:-256}" PAIRS="${PAIRS:-2}" WORDS="${WORDS:-40}"
MODEL_DIR="${MODEL_DIR:-/tmp/llama8b-rand}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

if [[ ! -f "$MODEL_DIR/config.json" ]]; then python3 "$BUNDLE/server/make_model.py" "$MODEL_DIR" >"$OUT_DIR/make_model.log" 2>&1; fi
NODES="${NODES:-2 4 8}"
MAX_NODES=$(printf '%s\n' $NODES | sort -n | tail -1)
NETWORK="loopback"
SERVER_HOST=127.0.0.1
# One namespace per node, each with a veth into a bridge whose address is the
# server's: mxg<i> at 10.77.0.<10+i>, the server at 10.77.0.1.
netns_down() {
  for i in $(seq 0 $((MAX_NODES - 1))); do ip netns del "mxg$i" 2>/dev/null || true; ip link del "mxv$i" 2>/dev/null || true; done
  ip link del mxbr0 2>/dev/null || true
}
netns_up() {
  ip link add mxbr0 type bridge && ip addr add 10.77.0.1/24 dev mxbr0 && ip link set mxbr0 up || return 1
  for i in $(seq 0 $((MAX_NODES - 1))); do
    ip netns add "mxg$i" && ip link add "mxv$i" type veth peer name "mxp$i" && ip link set "mxp$i" netns "mxg$i" &&
      ip link set "mxv$i" master mxbr0 up && ip -n "mxg$i" addr add "10.77.0.$((10 + i))/24" dev "mxp$i" &&
      ip -n "mxg$i" link set "mxp$i" up && ip -n "mxg$i" link set lo up || return 1
  done
  # Node to node across the bridge.
  nsenter --net=/run/netns/mxg0 python3 -m http.server --bind 10.77.0.10 9999 >/dev/null 2>&1 &
  local web=$!
  sleep 1
  nsenter --net=/run/netns/mxg1 python3 -c 'import urllib.request; urllib.request.urlopen("http://10.77.0.10:9999/", timeout=3)'
  local rc=$?
  kill $web 2>/dev/null || true
  return $rc
}
if [[ "${NETNS:-1}" == 1 && "$MAX_NODES" -ge 2 ]]; then
  if netns_up >"$OUT_DIR/netns.log" 2>&1; then
    NETWORK="network namespaces on a bridge"
    SERVER_HOST=10.77.0.1
  else
    NETWORK="loopback (namespaces refused: $(tail -1 "$OUT_DIR/netns.log"))"
    netns_down
  fi
fi
export SERVER_HOST
echo "nodes' network: $NETWORK"
python3 "$BUNDLE/server/oai_server.py" --model "$MODEL_DIR" --host 0.0.0.0 --port 8000 \
  --cb-config '{"use_cuda_graph": true, "max_memory_percent": 0.6}' >"$OUT_DIR/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; [[ "$SERVER_HOST" == 127.0.0.1 ]] || netns_down' EXIT
for _ in $(seq 300); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=2)' 2>/dev/null && break
  kill -0 $SERVER_PID 2>/dev/null || { tail -20 "$OUT_DIR/server.log"; exit 1; }
  sleep 1
done

# Rows whose prompts match bench_client.py's ("Request i: write a long story
# about" + WORDS made-up words).
python3 - "$ROWS" "$WORDS" >"$OUT_DIR/rows.jsonl" <<'PY'
import json, random, sys
rows, words = int(sys.argv[1]), int(sys.argv[2])
rnd = random.Random(1)
syl = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
for i in range(rows):
    w = ["".join(rnd.choice(syl) for _ in range(rnd.randint(1, 3))) for _ in range(words)]
    print(json.dumps({"id": f"q{i}", "i": i, "words": " ".join(w)}))
PY

for pair in $(seq "$PAIRS"); do
  python3 "$BUNDLE/server/bench_client.py" --base http://127.0.0.1:8000 --conc "$CONC" --rounds $((ROWS / CONC)) \
    --max-tokens "$MAX_TOKENS" --prompt-words "$WORDS" --no-stream --level-timeout 600 \
    --json-out "$OUT_DIR/server_$pair.json" >"$OUT_DIR/server_$pair.log" 2>&1
  rm -rf "$OUT_DIR/matrix_$pair"
  # Wall, user and system seconds of matrix and every process it started.
  python3 -c 'import os, subprocess, sys, time
t = time.time(); rc = subprocess.run(sys.argv[2:]).returncode; c = os.times()
open(sys.argv[1], "w").write(f"{time.time() - t} {c.children_user} {c.children_system}\n"); sys.exit(rc)' \
    "$OUT_DIR/matrix_$pair.time" env LD_LIBRARY_PATH="$BUNDLE/lib" "$BUNDLE/bin/matrix" run "$ROOT/bench/pipelines/one_call.yaml" dataset.path="$OUT_DIR/rows.jsonl" \
    "models.gpu.endpoints=[http://127.0.0.1:8000/v1]" run.max_concurrent_tasks="$CONC" \
    models.gpu.sampling.max_tokens="$MAX_TOKENS" models.gpu.sampling.min_tokens="$MAX_TOKENS" \
    --output "$OUT_DIR/matrix_$pair" --quiet >"$OUT_DIR/matrix_$pair.log" 2>&1
done

# The same rows spread over N `matrix node`s on this host (each in its own
# network namespace, or on loopback; CURVE, one partition each, 256 tasks in
# flight in all), sharing the one server.
for n in $NODES; do
  run="$OUT_DIR/nodes_$n.run" out="$OUT_DIR/nodes_$n"
  rm -rf "$run" "$out"
  LD_LIBRARY_PATH="$BUNDLE/lib" "$BUNDLE/bin/matrix" keys "$run" >/dev/null
  python3 -c 'import os, subprocess, sys, time
n, out, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
t = time.time()
ns = os.environ["SERVER_HOST"] != "127.0.0.1"
def node_argv(i):
    a = [x.replace("{i}", str(i)).replace("{n}", str(i + 1)).replace("{ip}", f"10.77.0.{10 + i}" if ns else "127.0.0.1")
         for x in argv]
    return ["nsenter", f"--net=/run/netns/mxg{i}"] + a if ns else a
procs = [subprocess.Popen(node_argv(i),
                          stdout=subprocess.DEVNULL, stderr=open(f"{out}.node{i}.log", "w")) for i in range(n)]
rc = max(p.wait() for p in procs); c = os.times()
open(out + ".time", "w").write(f"{time.time() - t} {c.children_user} {c.children_system}\n"); sys.exit(rc)' \
    "$n" "$out" env LD_LIBRARY_PATH="$BUNDLE/lib" "$BUNDLE/bin/matrix" node --run-dir "$run" --output "$out" \
    --node "n{n}" --node-index "{i}" --nodes "$n" --bind-host "{ip}" --job "gpu$n" --grace-s 5 \
    "$ROOT/bench/pipelines/one_call.yaml" dataset.path="$OUT_DIR/rows.jsonl" dataset.partitions="$n" \
    run.max_concurrent_tasks=$((CONC / n)) "models.gpu.endpoints=[http://$SERVER_HOST:8000/v1]" \
    models.gpu.sampling.max_tokens="$MAX_TOKENS" models.gpu.sampling.min_tokens="$MAX_TOKENS"
done

python3 - "$OUT_DIR" "$PAIRS" "$NODES" "$NETWORK" <<'PY'
import json, sys
out, pairs = sys.argv[1], int(sys.argv[2])
rows, res = [], {"pairs": [], "nodes_network": sys.argv[4]}
for p in range(1, pairs + 1):
    lvl = json.loads(open(f"{out}/server_{p}.json").read().strip().splitlines()[-1])
    server_tps = lvl["output_tok_per_s"]
    m = json.load(open(f"{out}/matrix_{p}/summary.json"))
    wall, user, sys_ = map(float, open(f"{out}/matrix_{p}.time").read().split())
    res["pairs"].append({"server": lvl, "matrix": {k: m[k] for k in ("records", "completion_tokens", "completion_tokens_per_s", "elapsed_s")},
                         "matrix_cpu_s": user + sys_})
    ratio = m["completion_tokens_per_s"] / server_tps if server_tps else float("nan")
    rows.append(f"| {p} | {server_tps:,.0f} | {m['completion_tokens_per_s']:,.0f} | {ratio:.2f} | {1000 * (user + sys_) / max(1, m['records']):.2f} ms |")
print("\n| pair | server alone, completion tok/s | matrix run, completion tok/s | ratio | CPU per LLM call (matrix, all processes) |")
print("|---|---|---|---|---|")
print("\n".join(rows))
servers = sorted(p["server"]["output_tok_per_s"] for p in res["pairs"])
server = servers[len(servers) // 2]
rows = []
for n in sys.argv[3].split():
    recs = [json.loads(l) for f in sorted(__import__("glob").glob(f"{out}/nodes_{n}/p*.jsonl")) for l in open(f)]
    wall, user, sys_ = map(float, open(f"{out}/nodes_{n}.time").read().split())
    tokens = sum(r["usage"]["completion_tokens"] for r in recs)
    done = sum(r["status"] == "done" for r in recs)
    res.setdefault("nodes", []).append({"nodes": int(n), "records": len(recs), "done": done, "wall_s": wall,
                                         "completion_tokens": tokens, "cpu_s": user + sys_})
    rows.append(f"| {n} | {done} of {len(recs)} | {tokens / wall:,.0f} | {tokens / wall / server:.2f} | {1000 * (user + sys_) / max(1, len(recs)):.2f} ms |")
print(f"\nnodes' network: {sys.argv[4]}")
print(f"\n| matrix nodes | records done | completion tok/s (wall, start to end) | of the server alone ({server:,.0f}) | CPU per LLM call |")
print("|---|---|---|---|---|")
print("\n".join(rows))
json.dump(res, open(f"{out}/gpu.json", "w"), indent=1)
PY
