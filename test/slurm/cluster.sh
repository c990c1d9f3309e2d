#!/usr/bin/env bash
# A real SLURM cluster on one machine: munged and slurmctld in the root network
# namespace behind a bridge, one slurmd per node in its own network namespace
# (own IP address, hostname and /etc/hosts). Needs root.
#
#   cluster.sh up DIR [NODES]       create and start everything under DIR (default 3 nodes)
#   cluster.sh down DIR             stop and remove everything `up` created (idempotent)
#   cluster.sh exec DIR NODE CMD... run CMD on NODE (its network namespace and hostname)
#   cluster.sh status DIR           nodes, jobs and the resources held
#
# Settings read by `up` from the environment:
#   MATRIX_SLURM_KILL_WAIT    KillWait, seconds between SIGTERM and SIGKILL (default 30)
#   MATRIX_SLURM_CPUS         CPUs declared per node (default 4; nodes share this machine's cores)
#   MATRIX_SLURM_EXTRA_CONF   file whose lines are appended to slurm.conf (keys not set here)
#   MATRIX_SLURM_UP_TIMEOUT   seconds to wait for all nodes to be idle (default 60)
#   MATRIX_SLURM_PROBE        1 (default): `up` ends with two probe jobs over all nodes
#                             (JobIds 1 and 2, name cluster-probe); 0: skip them
set -euo pipefail

readonly LOCK_FILE=/run/lock/matrix-slurm-cluster.lock
readonly NET_PREFIX=10.213  # nodes get NET_PREFIX.X.(10+i), slurmctld NET_PREFIX.X.1
readonly PORT_BASE=17000    # SlurmctldPort = PORT_BASE + 2*X, SlurmdPort = that + 1

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

usage() {
  grep '^#   cluster.sh ' "${BASH_SOURCE[0]}" | sed 's/^#   /usage: /' >&2
  exit 2
}

# Sets the names every command derives from DIR.
names() {
  DIR=$(realpath -m -- "$1")
  ID=$(printf '%s' "$DIR" | sha256sum | cut -c1-6)
  PFX="mxs$ID"            # 9 chars; interface names below stay within 15
  BRIDGE="${PFX}br"
  CONF="$DIR/etc/slurm.conf"
  STATE="$DIR/cluster.state"
  MUNGE_SOCKET="$DIR/munge/munge.socket.2"
}
netns_of() { echo "${PFX}-$1"; }
veth_of() { echo "${PFX}$1"; }

# Appends "KIND VALUE" to the state file before the resource is created, so
# that `down` removes it even when `up` stops half way.
record() { echo "$1 $2" >>"$STATE"; }
recorded() {
  if [[ -f $STATE ]]; then awk -v k="$1" '$1 == k { print $2 }' "$STATE"; fi
}

# wait_until SECONDS CMD...: polls CMD every 0.1 s; fails on timeout.
wait_until() {
  local deadline
  deadline=$(awk -v t="$1" -v n="$(now)" 'BEGIN { printf "%.3f", n + t }')
  shift
  until "$@" >/dev/null 2>&1; do
    awk -v d="$deadline" -v n="$(now)" 'BEGIN { exit !(n > d) }' && return 1
    sleep 0.1
  done
}

require_root_tools() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, bridges, mounts)"
  local t
  for t in ip nsenter unshare mount munged mungekey slurmctld slurmd sinfo scontrol ss flock; do
    command -v "$t" >/dev/null || die "missing '$t' (apt-get install -y slurm-wlm munge iproute2)"
  done
}

# stop_pids GRACE PID...: SIGTERM, up to GRACE tenths of a second, then SIGKILL.
stop_pids() {
  local grace=$1 p left
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq "$grace"); do
    left=0
    for p in "$@"; do [[ -d /proc/$p ]] && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
  sleep 0.2
}

# daemon_pids slurm|munge: this cluster's running slurmctld/slurmd or munged,
# from the pid files under DIR and, should those be gone, from the command
# lines that name DIR's slurm.conf or munge socket.
daemon_pids() {
  local f p comm args
  {
    if [[ $1 == slurm ]]; then
      for f in "$DIR"/run/*.pid; do [[ -f $f ]] && tr -dc '0-9\n' <"$f"; done
    else
      if [[ -f $DIR/munge/munged.pid ]]; then tr -dc '0-9\n' <"$DIR/munge/munged.pid"; fi
    fi
    for p in /proc/[0-9]*; do echo "${p#/proc/}"; done
  } | sort -un | while read -r p; do
    [[ -n $p ]] || continue
    read -r comm 2>/dev/null <"/proc/$p/comm" || continue
    case $1:$comm in
      slurm:slurmctld | slurm:slurmd | munge:munged) ;;
      *) continue ;;
    esac
    args=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
    case $1:$comm in
      slurm:slurmctld | slurm:slurmd) [[ $args == *" -f $CONF "* ]] && echo "$p" ;;
      munge:munged) [[ $args == *"--socket=$MUNGE_SOCKET "* ]] && echo "$p" ;;
    esac
  done
  return 0
}

our_netns() {
  { recorded netns; ip netns list 2>/dev/null | awk '{ print $1 }' | grep "^${PFX}-" || true; } | sort -u
}
our_links() {
  { recorded link; ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' |
    grep "^${PFX}" || true; } | sort -u
}

# ---------------------------------------------------------------- up

# Picks X so that NET_PREFIX.X.0/24 is unused and both ports are free, starting
# from a value derived from DIR; creates the bridge while holding the lock.
allocate_network() {
  local lock_fd start x i ctld_port used
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec {lock_fd}>"$LOCK_FILE"
  flock -w 60 "$lock_fd" || die "timed out waiting for $LOCK_FILE"
  start=$((16#${ID:0:4} % 256))
  used=$(ip -4 -o addr show; ip -4 route show table all 2>/dev/null || true)
  for i in $(seq 0 255); do
    x=$(((start + i) % 256))
    ((x == 0 || x == 255)) && continue
    grep -qE "(^| )${NET_PREFIX//./\\.}\\.${x}\\." <<<"$used" && continue
    ctld_port=$((PORT_BASE + 2 * x))
    ss -Htln "( sport = :$ctld_port or sport = :$((ctld_port + 1)) )" | grep -q . && continue
    SUBNET_X=$x
    CTLD_PORT=$ctld_port
    SLURMD_PORT=$((ctld_port + 1))
    CTL_IP="${NET_PREFIX}.${x}.1"
    record link "$BRIDGE"
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    flock -u "$lock_fd"
    exec {lock_fd}>&-
    return 0
  done
  die "no free ${NET_PREFIX}.X.0/24 subnet"
}

node_ip() { echo "${NET_PREFIX}.${SUBNET_X}.$((10 + $1))"; }

create_node_network() {
  local i=$1 node=n$1 ns veth ip
  ns=$(netns_of "$node")
  veth=$(veth_of "$node")
  ip=$(node_ip "$i")
  record netns "$ns"
  ip netns add "$ns"
  record link "$veth"
  ip link add "$veth" type veth peer name "${veth}p" netns "$ns"
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$ns" link set "${veth}p" name eth0
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$CTL_IP"
}

write_hosts() {
  local i file=$DIR/etc/hosts
  {
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    echo "$CTL_IP ctl $CTL_HOST"
    for i in $(seq 1 "$NODES"); do echo "$(node_ip "$i") n$i"; done
  } >"$file"
  chmod 0644 "$file"
}

start_munge() {
  mkdir -p "$DIR/munge"
  chmod 0755 "$DIR/munge"
  rm -f "$DIR/munge/munge.key" "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  mungekey --create --keyfile="$DIR/munge/munge.key" --bits=1024 >/dev/null
  chmod 0400 "$DIR/munge/munge.key"
  munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" ||
    die "munged failed to start; see $DIR/log/munged.log"
  wait_until 10 munge_ok || die "munged does not answer on $MUNGE_SOCKET"
}
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

write_slurm_conf() {
  local cpus=${MATRIX_SLURM_CPUS:-4} kill_wait=${MATRIX_SLURM_KILL_WAIT:-30} i
  : >"$DIR/etc/plugstack.conf"
  {
    cat <<EOF
ClusterName=mxs$ID
SlurmctldHost=$CTL_HOST($CTL_IP)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/etc/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SwitchType=switch/none
MpiDefault=none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
PropagateResourceLimits=NONE
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerParameters=batch_sched_delay=0
KillWait=$kill_wait
InactiveLimit=0
MinJobAge=300
MessageTimeout=10
SlurmctldTimeout=120
SlurmdTimeout=300
UnkillableStepTimeout=120
EOF
    for i in $(seq 1 "$NODES"); do
      echo "NodeName=n$i NodeHostname=n$i NodeAddr=$(node_ip "$i") CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=1024 State=UNKNOWN"
    done
    echo "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    if [[ -n ${MATRIX_SLURM_EXTRA_CONF:-} ]]; then cat "$MATRIX_SLURM_EXTRA_CONF"; fi
  } >"$CONF"
  chmod 0644 "$CONF"
}

# Runs "$@" in NODE's network namespace with a private UTS and mount
# namespace: hostname NODE, /etc/hosts from DIR/etc/hosts.
in_node() {
  local node=$1 ns
  shift
  ns=$(netns_of "$node")
  [[ -e /run/netns/$ns ]] || die "no network namespace $ns for node $node (is $DIR up?)"
  # shellcheck disable=SC2016  # expanded by the inner shell
  exec nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private -- \
    /bin/bash -c 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"' \
    node-init "$DIR/etc/hosts" "$node" "$@"
}

all_idle() {
  local states
  states=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  [[ $(grep -c ' idle$' <<<"$states") -eq $NODES ]]
}

# Two jobs over all nodes: srun from this namespace (nodes reach back to srun
# through the bridge), then a batch job running srun from n1. The first batch
# job after slurmctld starts waits for the scheduler's first pass (~3 s);
# the probe takes that wait here instead of in the tests.
probe() {
  local id state
  timeout 60 srun -N "$NODES" -J cluster-probe -D "$DIR/shared" -o /dev/null true ||
    die "probe: srun over $NODES nodes failed; see $DIR/log/"
  id=$(sbatch --parsable -N "$NODES" -J cluster-probe -D "$DIR/shared" -o "$DIR/log/probe-%j.out" \
    --wrap "srun -N $NODES true") || die "probe: sbatch failed"
  wait_until 60 probe_done "$id" || die "probe: batch job $id did not complete; see $DIR/log/"
  state=$(scontrol show job -o "$id" | grep -o 'JobState=[A-Z_]*')
  [[ $state == JobState=COMPLETED ]] || die "probe: batch job $id ended $state; see $DIR/log/probe-$id.out"
}
probe_done() {
  scontrol show job -o "$1" | grep -qE 'JobState=(COMPLETED|FAILED|CANCELLED|NODE_FAIL|TIMEOUT)'
}

write_env() {
  local i ips="" tmp="$DIR/env.sh.tmp"
  for i in $(seq 1 "$NODES"); do ips+="${ips:+ }$(node_ip "$i")"; done
  {
    echo "# source this file to use the cluster in $DIR"
    printf 'export SLURM_CONF=%q\n' "$CONF"
    # shellcheck disable=SC2016  # PATH is expanded when env.sh is sourced
    printf 'export PATH=%q:/usr/sbin:/usr/bin:"$PATH"\n' "$DIR/bin"
    printf 'export MATRIX_SLURM_DIR=%q\n' "$DIR"
    printf 'export MATRIX_SLURM_SHARED=%q\n' "$DIR/shared"
    printf 'export MATRIX_SLURM_NODES=%q\n' "$(seq -s ' ' -f 'n%g' 1 "$NODES")"
    printf 'export MATRIX_SLURM_NODE_IPS=%q\n' "$ips"
    for i in $(seq 1 "$NODES"); do
      printf 'export MATRIX_SLURM_IP_n%d=%q\n' "$i" "$(node_ip "$i")"
      printf 'export MATRIX_SLURM_NETNS_n%d=%q\n' "$i" "$(netns_of "n$i")"
    done
    printf 'export MATRIX_SLURM_CTL_IP=%q\n' "$CTL_IP"
    printf 'export MATRIX_SLURM_BRIDGE=%q\n' "$BRIDGE"
    printf 'export MATRIX_SLURM_CTLD_PORT=%q\n' "$CTLD_PORT"
    printf 'export MATRIX_SLURM_SLURMD_PORT=%q\n' "$SLURMD_PORT"
    printf 'export MATRIX_SLURM_CLUSTER=%q\n' "$SELF"
  } >"$tmp"
  mv "$tmp" "$DIR/env.sh"
  # on-node NODE CMD...: shorthand for `cluster.sh exec DIR NODE CMD...`
  printf '#!/usr/bin/env bash\nexec %q exec %q "$@"\n' "$SELF" "$DIR" >"$DIR/bin/on-node"
  chmod 0755 "$DIR/bin/on-node"
}

cmd_up() {
  (($# >= 1 && $# <= 2)) || usage
  require_root_tools
  names "$1"
  NODES=${2:-3}
  if ! [[ $NODES =~ ^[0-9]+$ ]] || ((NODES < 1 || NODES > 200)); then die "NODES must be 1..200"; fi
  # unix socket paths under DIR (munge, slurmstepd) must fit in 108 bytes
  ((${#DIR} <= 60)) || die "DIR path too long (${#DIR} > 60 chars): $DIR"
  SELF=$(readlink -f "${BASH_SOURCE[0]}")
  if [[ -f $STATE ]]; then
    log "cleaning up a previous cluster in $DIR"
    do_down
  fi
  local t0
  t0=$(now)
  mkdir -p "$DIR"/{etc,log,run,spool/ctld,bin,shared,munge}
  # munged requires search permission for all on every directory above its socket
  chmod a+x "$DIR"
  local d=$DIR
  while d=$(dirname "$d") && [[ $d != / ]]; do
    (((8#$(stat -c '%a' "$d") & 8#111) == 8#111)) || die "$d must be searchable by all (chmod a+x) for munged"
  done
  rm -f "$DIR"/log/* "$DIR"/run/*.pid "$DIR/env.sh"
  rm -rf "$DIR"/spool/ctld/* "$DIR"/spool/slurmd-*
  echo "dir $DIR" >"$STATE"
  record nodes "$NODES"

  allocate_network
  record subnet "${NET_PREFIX}.${SUBNET_X}.0/24"
  CTL_HOST=$(hostname -s)
  local i
  for i in $(seq 1 "$NODES"); do create_node_network "$i"; done
  write_hosts

  export SLURM_CONF=$CONF
  start_munge
  write_slurm_conf
  slurmctld -f "$CONF" || die "slurmctld failed; see $DIR/log/slurmctld.log"
  wait_until 20 scontrol ping || die "slurmctld not answering; see $DIR/log/slurmctld.log"
  for i in $(seq 1 "$NODES"); do
    (in_node "n$i" slurmd -f "$CONF" -N "n$i") ||
      die "slurmd n$i failed; see $DIR/log/slurmd-n$i.log"
  done
  if ! wait_until "${MATRIX_SLURM_UP_TIMEOUT:-60}" all_idle; then
    sinfo -N >&2 || true
    tail -n 20 "$DIR"/log/slurm*.log >&2 || true
    die "nodes not idle after ${MATRIX_SLURM_UP_TIMEOUT:-60} s"
  fi
  if [[ ${MATRIX_SLURM_PROBE:-1} == 1 ]]; then probe; fi
  write_env
  echo "up" >"$DIR/cluster.up"
  log "up: $NODES nodes on ${NET_PREFIX}.${SUBNET_X}.0/24 (bridge $BRIDGE, slurmctld port $CTLD_PORT) in $(elapsed "$t0") s"
  log "use: source $DIR/env.sh"
}

# ---------------------------------------------------------------- down

do_down() {
  local ctld_pid pids=() ctld_children=() ns link p
  rm -f "$DIR/cluster.up" "$DIR/env.sh"
  ctld_pid=$(daemon_pids slurm | while read -r p; do
    if grep -qx slurmctld "/proc/$p/comm" 2>/dev/null; then echo "$p"; fi
  done | head -n 1)
  if [[ -n $ctld_pid ]]; then
    mapfile -t ctld_children < <(pgrep -P "$ctld_pid" || true)
  fi
  if [[ -n $ctld_pid && -f $CONF ]]; then
    export SLURM_CONF=$CONF
    local jobs
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # SIGKILL to the batch shells now (a plain cancel would wait KillWait),
      # then cancel what remains (steps)
      # shellcheck disable=SC2086  # one job id per word
      timeout 10 scancel -b -s KILL $jobs 2>/dev/null || true
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      wait_until 3 no_jobs || true
    fi
    # job processes left on the nodes (steps ignoring SIGTERM, their
    # slurmstepd): slurmd does not shut down while it waits for them
    mapfile -t pids < <(node_pids | grep -vxF -f <(daemon_pids slurm; echo 0) || true)
    if ((${#pids[@]})); then
      stop_pids 10 "${pids[@]}"
      # slurmd reports the end of those jobs (it would retry for MessageTimeout
      # with slurmctld gone)
      wait_until 5 no_jobs || true
    fi
    timeout 15 scontrol shutdown >/dev/null 2>&1 || true
    wait_until 10 slurm_gone || true
  fi
  # slurm daemons that did not stop, then slurmctld's child slurmscriptd
  mapfile -t pids < <(daemon_pids slurm)
  stop_pids 30 "${pids[@]}"
  for p in "${ctld_children[@]}"; do
    if [[ -d /proc/$p ]] && grep -q slurm "/proc/$p/comm" 2>/dev/null; then stop_pids 30 "$p"; fi
  done
  # every process still inside a node's network namespace: slurmstepd, job
  # tasks, commands started with `exec`
  mapfile -t pids < <(node_pids)
  stop_pids 10 "${pids[@]}"
  # munged last: slurm needs it to shut down. It takes 1-2 s to act on
  # SIGTERM and keeps nothing this cluster needs (PRNG seed), so wait 0.5 s.
  mapfile -t pids < <(daemon_pids munge)
  stop_pids 5 "${pids[@]}"
  while read -r link; do
    [[ -n $link && $link != "$BRIDGE" ]] || continue
    if ip link show "$link" >/dev/null 2>&1; then ip link del "$link" 2>/dev/null || true; fi
  done < <(our_links)
  while read -r ns; do
    [[ -n $ns ]] || continue
    if [[ -e /run/netns/$ns ]]; then ip netns del "$ns" 2>/dev/null || true; fi
  done < <(our_netns)
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  # mounts below DIR in this mount namespace (up makes none; remove strays)
  awk -v d="$DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -f "$STATE"
  verify_down
}

# Pids of all processes in the nodes' network namespaces.
node_pids() {
  local ns
  while read -r ns; do
    if [[ -n $ns && -e /run/netns/$ns ]]; then ip netns pids "$ns" 2>/dev/null || true; fi
  done < <(our_netns)
}
slurm_gone() { [[ -z $(daemon_pids slurm) ]]; }
no_jobs() { [[ -z $(timeout 5 squeue -h -o %A) ]]; }

verify_down() {
  local left="" p
  p=$(daemon_pids slurm; daemon_pids munge)
  [[ -z $p ]] || left+=" processes(${p//$'\n'/ })"
  [[ -z $(ip netns list 2>/dev/null | grep "^${PFX}-" || true) ]] || left+=" netns"
  [[ -z $(ip -o link show 2>/dev/null | grep ": ${PFX}" || true) ]] || left+=" links"
  if [[ -n $left ]]; then
    log "down: leftovers in $DIR:$left"
    return 1
  fi
}

cmd_down() {
  (($# == 1)) || usage
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  names "$1"
  local t0
  t0=$(now)
  do_down
  log "down: $DIR clean in $(elapsed "$t0") s"
}

# ---------------------------------------------------------------- exec, status

cmd_exec() {
  (($# >= 3)) || usage
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  names "$1"
  [[ $2 =~ ^n[0-9]+$ ]] || die "bad node name '$2' (n1, n2, ...)"
  local node=$2
  shift 2
  in_node "$node" "$@"
}

cmd_status() {
  (($# == 1)) || usage
  names "$1"
  echo "dir:     $DIR"
  echo "bridge:  $BRIDGE ($(ip -4 -o addr show dev "$BRIDGE" 2>/dev/null | awk '{ print $4 }'))"
  echo "netns:   $(our_netns | tr '\n' ' ')"
  echo "pids:    $(daemon_pids munge | tr '\n' ' ')$(daemon_pids slurm | tr '\n' ' ')"
  if [[ -f $DIR/cluster.up ]]; then
    SLURM_CONF=$CONF sinfo -N -l || true
    SLURM_CONF=$CONF squeue || true
  else
    echo "state:   not up"
  fi
}

main() {
  (($# >= 1)) || usage
  local cmd=$1
  shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    exec) cmd_exec "$@" ;;
    status) cmd_status "$@" ;;
    *) usage ;;
  esac
}

main "$@"
