#!/usr/bin/env bash
# Submits a Matrix pipeline together with its model servers: a model-server
# job (slurm/model_server.sbatch) and the pipeline job (slurm/matrix.sbatch)
# sharing RUN_DIR, plus a one-line cleanup job that cancels the model servers
# when the pipeline job ends (whatever its outcome).
#
#   slurm/submit.sh RUN_DIR PIPELINE.yaml --model-nodes 2 --gpus-per-node 8 --engine vllm \
#       --model meta-llama/Llama-3.1-8B-Instruct --daemon-nodes 3 [key.path=value ...]
#
# Options:
#   --daemon-nodes N       nodes of the pipeline job (default 1)
#   --model-nodes K        nodes of the model-server job (default 1)
#   --gpus-per-node G      GPUs per model-server node (default 1; sim: none)
#   --engine E             vllm (default), sglang or sim
#   --model NAME           model to serve (default: the pipeline's model name for --model-key)
#   --model-key KEY        the model's key under `models:` (default: the pipeline's only
#                          model whose endpoints are [sim] or [registered])
#   --tp N                 GPUs per server (default 1)
#   --port-base P          first server port on a node (default 8000; sim: any free port)
#   --engine-args "ARGS"   more arguments for the engine (split at spaces)
#   --model-sbatch "ARGS"  more sbatch options for the model-server job (partition, time, account, ...)
#   --daemon-sbatch "ARGS" more sbatch options for the pipeline job and the cleanup job
#   --no-wait              start the pipeline job without waiting for the model-server job to start
#   --no-cleanup           leave the model servers running when the pipeline job ends
#   --parsable             print only "MODEL_JOB PIPELINE_JOB [CLEANUP_JOB]"
#   key.path=value         pipeline overrides, passed to the pipeline job
#
# By default the pipeline job starts once the model-server job has started
# (--dependency=after): its workers use each server as soon as it is
# registered in RUN_DIR/models/KEY/. Job output: RUN_DIR/slurm-logs/.
# To stop everything: scancel PIPELINE_JOB (the cleanup job then cancels the
# model servers), or scancel both.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

die() { echo "submit.sh: $*" >&2; exit 2; }
usage() {
  cat >&2 <<EOT
usage: slurm/submit.sh RUN_DIR PIPELINE.yaml [--daemon-nodes N] [--model-nodes K] [--gpus-per-node G]
           [--engine vllm|sglang|sim] [--model NAME] [--model-key KEY] [--tp N] [--port-base P]
           [--engine-args "ARGS"] [--model-sbatch "ARGS"] [--daemon-sbatch "ARGS"]
           [--no-wait] [--no-cleanup] [--parsable] [key.path=value ...]
(the options are described at the top of ${BASH_SOURCE[0]})
EOT
  exit 2
}

(($# >= 2)) || usage
RUN_DIR=$(realpath -m -- "$1")
PIPELINE=$(realpath -- "$2") || die "no pipeline file '$2'"
shift 2

DAEMON_NODES=1 MODEL_NODES=1 GPUS="" ENGINE=vllm MODEL="" MODEL_KEY="" TP=1 PORT_BASE=""
ENGINE_ARGS="" MODEL_SBATCH="" DAEMON_SBATCH="" WAIT=1 CLEANUP=1 PARSABLE=0
OVERRIDES=()
need() { (($# >= 2)) || die "$1 needs a value"; }
while (($#)); do
  case $1 in
    --daemon-nodes) need "$@"; DAEMON_NODES=$2; shift 2 ;;
    --model-nodes) need "$@"; MODEL_NODES=$2; shift 2 ;;
    --gpus-per-node) need "$@"; GPUS=$2; shift 2 ;;
    --engine) need "$@"; ENGINE=$2; shift 2 ;;
    --model) need "$@"; MODEL=$2; shift 2 ;;
    --model-key) need "$@"; MODEL_KEY=$2; shift 2 ;;
    --tp) need "$@"; TP=$2; shift 2 ;;
    --port-base) need "$@"; PORT_BASE=$2; shift 2 ;;
    --engine-args) need "$@"; ENGINE_ARGS=$2; shift 2 ;;
    --model-sbatch) need "$@"; MODEL_SBATCH=$2; shift 2 ;;
    --daemon-sbatch) need "$@"; DAEMON_SBATCH=$2; shift 2 ;;
    --no-wait) WAIT=0; shift ;;
    --no-cleanup) CLEANUP=0; shift ;;
    --parsable) PARSABLE=1; shift ;;
    -h | --help) usage ;;
    --*) die "unknown option '$1'" ;;
    *=*) OVERRIDES+=("$1"); shift ;;
    *) die "unexpected argument '$1' (pipeline overrides are key.path=value)" ;;
  esac
done
for v in DAEMON_NODES MODEL_NODES TP; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--${v,,} must be a positive integer, got '${!v}'"
done
case $ENGINE in
  vllm | sglang) GPUS=${GPUS:-1} ;;
  sim) ;;
  *) die "--engine must be vllm, sglang or sim" ;;
esac
[[ -z $GPUS || $GPUS =~ ^[0-9]+$ ]] || die "--gpus-per-node must be a whole number, got '$GPUS'"
command -v sbatch >/dev/null || die "sbatch not found"

# The jobs find the binaries through MATRIX_BIN or MATRIX_HOME (exported).
if [[ -z ${MATRIX_BIN:-} && -z ${MATRIX_HOME:-} ]]; then export MATRIX_HOME=$ROOT; fi
BIN=${MATRIX_BIN:-${MATRIX_HOME:-$ROOT}/build/release/bin}

# Model key and name from the pipeline, when not given.
if [[ -x $BIN/matrix ]]; then
  description=$("$BIN/matrix" validate "$PIPELINE" "${OVERRIDES[@]}") || die "pipeline $PIPELINE is not valid (errors above)"
  models=$(awk '/^  models:/ { m = 1; next } m && /^  [a-z]/ { m = 0 } m && /^    [^ ]+: / { print }' <<<"$description")
  if [[ -z $MODEL_KEY ]]; then
    candidates=$(grep -E ' @ .*(sim|registered)' <<<"$models" | sed -E 's/^ *([^:]+):.*/\1/' || true)
    [[ $(grep -c . <<<"$candidates") -eq 1 ]] ||
      die "cannot tell which model to serve (models: $(sed -E 's/^ *([^:]+):.*/\1/' <<<"$models" | tr '\n' ' ')); give --model-key"
    MODEL_KEY=$candidates
  fi
  if [[ -z $MODEL ]]; then
    MODEL=$(awk -v k="$MODEL_KEY" '$1 == k ":" { print $2; exit }' <<<"$models")
  fi
fi
[[ -n $MODEL_KEY ]] || die "--model-key is needed (no $BIN/matrix to read the pipeline with)"
[[ -n $MODEL || $ENGINE == sim ]] || die "--model is needed"

umask 077
mkdir -p -- "$RUN_DIR/slurm-logs"
chmod 0700 -- "$RUN_DIR"
LOGS=$RUN_DIR/slurm-logs

read -r -a model_sbatch <<<"$MODEL_SBATCH"
read -r -a daemon_sbatch <<<"$DAEMON_SBATCH"
read -r -a engine_args <<<"$ENGINE_ARGS"

model_cmd=(sbatch --parsable -N "$MODEL_NODES" -o "$LOGS/%x-%j.out")
if [[ -n $GPUS && $GPUS != 0 ]]; then model_cmd+=(--gpus-per-node="$GPUS"); fi
model_cmd+=("${model_sbatch[@]}" "$HERE/model_server.sbatch" "$RUN_DIR" "$MODEL_KEY" --engine "$ENGINE" --tp "$TP")
if [[ -n $MODEL ]]; then model_cmd+=(--model "$MODEL"); fi
if [[ -n $PORT_BASE ]]; then model_cmd+=(--port-base "$PORT_BASE"); fi
if ((${#engine_args[@]})); then model_cmd+=(-- "${engine_args[@]}"); fi
model_job=$("${model_cmd[@]}") || die "sbatch of the model servers failed"
model_job=${model_job%%;*}

main_cmd=(sbatch --parsable -N "$DAEMON_NODES" -o "$LOGS/%x-%j.out")
if ((WAIT)); then main_cmd+=(--dependency="after:$model_job"); fi
main_cmd+=("${daemon_sbatch[@]}" "$HERE/matrix.sbatch" "$RUN_DIR" "$PIPELINE" "${OVERRIDES[@]}")
if ! main_job=$("${main_cmd[@]}"); then
  scancel "$model_job" || true
  die "sbatch of the pipeline failed; cancelled the model servers (job $model_job)"
fi
main_job=${main_job%%;*}

cleanup_job=""
if ((CLEANUP)); then
  cleanup_job=$(sbatch --parsable -N 1 -n 1 -J matrix-cleanup -t 5 -o "$LOGS/%x-%j.out" \
    --dependency="afterany:$main_job" --kill-on-invalid-dep=yes "${daemon_sbatch[@]}" \
    --wrap "scancel $model_job") ||
    echo "submit.sh: warning: no cleanup job; cancel the model servers yourself: scancel $model_job" >&2
  cleanup_job=${cleanup_job%%;*}
fi

if ((PARSABLE)); then
  echo "$model_job $main_job${cleanup_job:+ $cleanup_job}"
  exit 0
fi
echo "model servers: job $model_job ($ENGINE, ${MODEL:-sim} as '$MODEL_KEY', $MODEL_NODES node(s)${GPUS:+ x $GPUS GPU(s)}, tp $TP)"
when=""
if ((WAIT)); then when=", starts once job $model_job has started"; fi
echo "pipeline:      job $main_job ($DAEMON_NODES node(s)$when)"
if [[ -n $cleanup_job ]]; then
  echo "cleanup:       job $cleanup_job (cancels job $model_job when job $main_job ends)"
else
  echo "cleanup:       none: scancel $model_job when job $main_job has ended"
fi
echo "run dir:       $RUN_DIR (output in $RUN_DIR/output, job logs in $LOGS)"
