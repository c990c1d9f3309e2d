#!/usr/bin/env bash
# End-to-end check of the one-machine SLURM cluster (cluster.sh):
#   1. `up` with 3 nodes, each in its own network namespace;
#   2. a 3-node sbatch job whose srun step reports hostname, SLURMD_NODENAME and
#      IP from every node: three distinct hostnames and IPs;
#   3. a TCP server started by a job on n1, bound to n1's address, fetched with
#      curl from n2's namespace;
#   4. scancel delivers SIGTERM to a running batch script (its trap writes a marker);
#   5. `down` leaves no namespaces, interfaces, processes or mounts behind.
# Exit 0: pass, 77: skipped (not root or SLURM/munge/iproute2 missing), else fail.
# KEEP_SLURM_DIR=1 keeps the cluster directory (configs, logs) after a failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER=$HERE/cluster.sh

# shellcheck source-path=SCRIPTDIR source=test_lib.sh
source "$HERE/test_lib.sh"

[[ $(id -u) -eq 0 ]] || skip "needs root (network namespaces, bridge, slurmd as root)"
for tool in slurmctld slurmd munged mungekey sbatch srun scancel ip nsenter unshare curl python3; do
  command -v "$tool" >/dev/null || skip "'$tool' not installed (apt-get install -y slurm-wlm munge iproute2 curl)"
done

failure_logs() {
  echo "== logs from $DIR/log (last lines)" >&2
  tail -n 15 "$DIR"/log/*.log >&2 2>/dev/null || true
}
make_cluster_dir mxslurm

# ------------------------------------------------------------------ 1. up
step "up: 3 nodes in $DIR"
t0=$(now)
"$CLUSTER" up "$DIR" 3 || fail "cluster.sh up failed (its messages above)"
t_up=$(since "$t0")
# shellcheck source=/dev/null
source "$DIR/env.sh"
ip_of() { local v=MATRIX_SLURM_IP_$1; echo "${!v}"; }
ip_n1=$(ip_of n1)
ip_n2=$(ip_of n2)
RUN=$MATRIX_SLURM_SHARED/run1
mkdir -p "$RUN"
[[ $(sinfo -h -N -o '%N %T' | grep -c ' idle$') -eq 3 ]] || fail "sinfo does not show 3 idle nodes"

# ------------------------------------------------------------------ 2. 3-node job
step "3-node job: hostname, SLURMD_NODENAME and IP of every node"
cat >"$RUN/hosts.sbatch" <<'EOF'
#!/bin/bash
set -euo pipefail
srun --overlap -N3 --ntasks-per-node=1 bash -c 'echo $(hostname) $SLURMD_NODENAME $(hostname -I)' \
  >hosts.txt
EOF
t0=$(now)
id=$(sbatch --parsable -N3 --ntasks-per-node=1 -D "$RUN" -o "$RUN/hosts.out" "$RUN/hosts.sbatch")
state=$(wait_job "$id" 60)
t_job=$(since "$t0")
[[ $state == COMPLETED && $(job_exit "$id") == 0:0 ]] ||
  fail "job $id ended $state exit $(job_exit "$id"): $(cat "$RUN/hosts.out" 2>/dev/null)"
cat "$RUN/hosts.txt"
[[ $(wc -l <"$RUN/hosts.txt") -eq 3 ]] || fail "expected 3 lines in hosts.txt"
[[ $(awk '{ print $1 }' "$RUN/hosts.txt" | sort -u | wc -l) -eq 3 ]] || fail "hostnames not distinct"
[[ $(awk '{ print $3 }' "$RUN/hosts.txt" | sort -u | wc -l) -eq 3 ]] || fail "IPs not distinct"
for node in $MATRIX_SLURM_NODES; do
  grep -qx "$node $node $(ip_of "$node")" "$RUN/hosts.txt" ||
    fail "no line '$node $node $(ip_of "$node")' (hostname, SLURMD_NODENAME, IP) in hosts.txt"
done

# ------------------------------------------------------------------ 3. TCP n2 -> n1
step "TCP: server started by a job on n1, fetched from n2's namespace"
mkdir -p "$RUN/www"
token="token-$RANDOM-$RANDOM"
echo "$token" >"$RUN/www/token.txt"
cat >"$RUN/server.py" <<'EOF'
import functools, http.server, os, socket, sys
ip, root, addr_file = sys.argv[1:4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer((ip, 0), handler)
with open(addr_file + ".tmp", "w") as f:
    f.write(f"{socket.gethostname()} {ip} {server.server_address[1]}\n")
os.rename(addr_file + ".tmp", addr_file)
server.serve_forever()
EOF
cat >"$RUN/server.sbatch" <<'EOF'
#!/bin/bash
set -euo pipefail
ip_var=MATRIX_SLURM_IP_$SLURMD_NODENAME
python3 -u server.py "${!ip_var}" www server.addr 2>server.log &
server=$!
for _ in $(seq 600); do [[ -e done ]] && break; sleep 0.1; done
kill "$server"
EOF
id=$(sbatch --parsable -N1 -w n1 -D "$RUN" -o "$RUN/server.out" "$RUN/server.sbatch")
wait_file "$RUN/server.addr" 30
read -r srv_host srv_ip srv_port <"$RUN/server.addr"
echo "server on host $srv_host at $srv_ip:$srv_port"
[[ $srv_host == n1 && $srv_ip == "$ip_n1" ]] || fail "server not on n1: $srv_host $srv_ip"
got=$("$CLUSTER" exec "$DIR" n2 curl -sS --max-time 10 "http://$srv_ip:$srv_port/token.txt") ||
  fail "curl from n2 to $srv_ip:$srv_port failed"
[[ $got == "$token" ]] || fail "fetched '$got', expected '$token'"
grep -q "^$ip_n2 .*GET /token.txt" "$RUN/server.log" ||
  fail "server did not see the request coming from n2 ($ip_n2): $(cat "$RUN/server.log")"
# names resolve inside a node through its private /etc/hosts
got=$("$CLUSTER" exec "$DIR" n3 curl -sS --max-time 10 "http://n1:$srv_port/token.txt") ||
  fail "curl from n3 to n1:$srv_port by name failed"
[[ $got == "$token" ]] || fail "fetched '$got' by name, expected '$token'"
touch "$RUN/done"
state=$(wait_job "$id" 30)
[[ $state == COMPLETED ]] || fail "server job $id ended $state: $(cat "$RUN/server.out")"

# ------------------------------------------------------------------ 4. scancel -> SIGTERM
step "scancel: SIGTERM reaches the batch script"
cat >"$RUN/term.sbatch" <<'EOF'
#!/bin/bash
trap 'echo "TERM on $(hostname)" >term.marker; exit 0' TERM
echo started >term.started
while :; do sleep 0.1; done
EOF
id=$(sbatch --parsable -N1 -w n3 -D "$RUN" -o "$RUN/term.out" "$RUN/term.sbatch")
wait_file "$RUN/term.started" 30
t0=$(now)
scancel "$id"
wait_file "$RUN/term.marker" 10
t_term=$(since "$t0")
[[ $(cat "$RUN/term.marker") == "TERM on n3" ]] || fail "marker: $(cat "$RUN/term.marker")"
state=$(wait_job "$id" 60)
[[ $state == CANCELLED ]] || fail "cancelled job $id ended $state"

# ------------------------------------------------------------------ 5. down
step "down"
netns_names=()
for node in $MATRIX_SLURM_NODES; do
  ns_var=MATRIX_SLURM_NETNS_$node
  netns_names+=("${!ns_var}")
done
bridge=$MATRIX_SLURM_BRIDGE
prefix=${bridge%br}
t0=$(now)
"$CLUSTER" down "$DIR"
t_down=$(since "$t0")
for ns in "${netns_names[@]}"; do
  ! ip netns list | grep -qw "$ns" || fail "namespace $ns left after down"
done
! ip -o link show | grep -q ": $prefix" || fail "interfaces $prefix* left after down"
! pgrep -af -- "$DIR" || fail "processes mentioning $DIR left after down"
! grep -qF "$DIR" /proc/self/mountinfo || fail "mounts under $DIR left after down"

echo "timing: up ${t_up} s, 3-node job ${t_job} s (submit to COMPLETED), scancel to trap ${t_term} s, down ${t_down} s"
echo "PASS"
