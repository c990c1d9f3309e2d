# shellcheck shell=bash
# Shared by the SLURM tests (sourced): messages, a cluster directory that is
# torn down on exit, and job polling.
#   source "$HERE/test_lib.sh"          # needs CLUSTER (path of cluster.sh)
#   failure_logs() { ...; }             # optional: what to print when the test fails
#   make_cluster_dir mxtest             # DIR=/tmp/mxtest.XXXXXX, `cluster.sh down` + rm on exit
# KEEP_SLURM_DIR=1 keeps DIR after a failure.

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "-- [$(date +%T)] $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0)) && [[ -d $DIR/log ]]; then
    declare -F failure_logs >/dev/null && failure_logs
    SLURM_CONF=$DIR/etc/slurm.conf timeout 5 squeue >&2 2>/dev/null || true
  fi
  "$CLUSTER" down "$DIR" || rc=1
  if ((rc != 0)) && [[ ${KEEP_SLURM_DIR:-0} == 1 ]]; then
    echo "kept $DIR" >&2
  else
    rm -rf "$DIR"
  fi
  exit "$rc"
}
make_cluster_dir() {
  DIR=$(mktemp -d "/tmp/$1.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

# job_field ID FIELD: a field of `scontrol show job` ("" when the job is unknown).
job_field() {
  scontrol show job -o "$1" 2>/dev/null | grep -o " $2=[^ ]*" | head -n 1 | cut -d= -f2 || true
}
job_state() { job_field "$1" JobState; }
job_exit() { job_field "$1" ExitCode; }
# wait_job ID TIMEOUT [EVERY CMD...]: polls until the job has left squeue with a
# final state and prints it; runs CMD every EVERY seconds meanwhile.
wait_job() {
  local id=$1 deadline state every=${3:-0} next=0
  deadline=$(($(date +%s) + $2))
  shift 3 2>/dev/null || shift $#
  while :; do
    state=$(job_state "$id")
    case $state in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | PREEMPTED | BOOT_FAIL | DEADLINE)
        if [[ -z $(squeue -h -j "$id" 2>/dev/null) ]]; then
          echo "$state"
          return 0
        fi
        ;;
    esac
    (($(date +%s) < deadline)) || fail "job $id still '$state' after $2 s"
    if ((every > 0 && $(date +%s) >= next)); then
      "$@" >&2 || true
      next=$(($(date +%s) + every))
    fi
    sleep 0.2
  done
}
# wait_file PATH TIMEOUT: until PATH exists and is not empty.
wait_file() {
  local deadline=$(($(date +%s) + $2))
  until [[ -s $1 ]]; do
    (($(date +%s) < deadline)) || fail "no $1 after $2 s"
    sleep 0.1
  done
}
