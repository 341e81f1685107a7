#!/usr/bin/env bash
# jaxtrain on a SLURM GPU cluster: submit with sbatch, one srun step of jaxtrain
# processes (one per GPU or one per node), requeued when the time limit or a
# preemption stops it, resuming from its last checkpoint. See gpu/README.md.
#
# The #SBATCH lines are defaults; sbatch's own flags override them.
#SBATCH --job-name=jaxtrain
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
set -euo pipefail

PROG=jaxtrain-slurm
usage() {
  cat <<'EOF'
Usage: sbatch --nodes=N --gpus-per-node=G [sbatch options] gpu/slurm.sh --config=FILE --workdir=DIR [options] [-- ARGS ...]
       gpu/slurm.sh --dry-run --nodes=N --gpus-per-node=G --config=FILE --workdir=DIR [options] [-- ARGS ...]

Inside a SLURM allocation (an sbatch job), start 'jaxtrain COMMAND --config=FILE
--workdir=DIR [ARGS]' as one srun step over all nodes: one task per GPU (default)
or one per node, each using its share of the node's GPUs (jaxtrain finds the
coordinator, process ids and GPUs from srun's variables). ARGS after '--' go to
jaxtrain unchanged: config overrides --config.SECTION.FIELD=VALUE (and lr-find's
own flags). --workdir must be on a file system every node shares.

Preemption and time limits: the job is submitted with --requeue and
--signal=B:USR1@300, so 300 s before its time limit this script gets SIGUSR1, sends
SIGTERM to every jaxtrain process (scancel --signal=TERM), which saves a checkpoint
and exits 0, and requeues the job (scontrol requeue); the requeued job resumes from
that checkpoint. A preemption (PreemptMode=REQUEUE) sends SIGTERM to the tasks
itself and requeues the job; give it a GraceTime long enough for one checkpoint.

Flags:
  --config=FILE         experiment (or study) module, e.g. experiments/digits_cnn.py
  --workdir=DIR         run directory on a shared file system (or gs://BUCKET/PATH)
  --command=COMMAND     jaxtrain subcommand: train, sweep or lr-find [train]
  --tasks=LAYOUT        per-gpu: one process per GPU (NVIDIA's usual layout);
                        per-node: one process per node using all its GPUs [per-gpu]
  --nodes=N             nodes of the step [$SLURM_JOB_NUM_NODES, else 1]
  --gpus-per-node=G     GPUs per node [$SLURM_GPUS_ON_NODE]
  --cpus-per-task=C     CPUs per task (input pipeline threads) [$SLURM_CPUS_ON_NODE
                        divided by the tasks per node, when set]
  --python=PY           Python with jaxtrain installed [python3]
  --env=KEY=VALUE       export an environment variable to jaxtrain (repeatable),
                        e.g. --env=XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
  --dry-run             print the srun command (one line, shell-quoted) and exit
  -h, --help            show this help and exit
EOF
}

die_usage() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Try '%s --help'.\n" "${0##*/}" >&2
  exit 2
}

# shquote WORD: WORD quoted for a POSIX shell; safe words are left bare.
shquote() {
  local s=$1 q="'\\''"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/"$q"}"
  fi
}

COMMAND=train CONFIG="" WORKDIR="" TASKS=per-gpu PYTHON=python3 DRY_RUN=0
NODES=${SLURM_JOB_NUM_NODES:-1}
GPUS=${SLURM_GPUS_ON_NODE:-}
CPUS=""
ENVS=() ARGS=()

# --flag=value and --flag value (a value never starts with '--'); sets val and
# shift_by. Called with the remaining arguments.
need_value() {
  if ((inline)); then
    [[ -n $val ]] || die_usage "$opt needs a value"
  elif (($# < 2)) || [[ -z $2 || $2 == --* ]]; then
    die_usage "$opt needs a value"
  else
    val=$2 shift_by=2
  fi
}

while (($#)); do
  opt=$1 val="" inline=0 shift_by=1
  if [[ $opt == --*=* ]]; then
    val=${opt#*=} opt=${opt%%=*} inline=1
  fi
  case $opt in
    -h|--help) usage; exit 0 ;;
    --) shift; ARGS=("$@"); break ;;
    --config) need_value "$@"; CONFIG=$val ;;
    --workdir) need_value "$@"; WORKDIR=$val ;;
    --command) need_value "$@"; COMMAND=$val ;;
    --tasks) need_value "$@"; TASKS=$val ;;
    --nodes) need_value "$@"; NODES=$val ;;
    --gpus-per-node) need_value "$@"; GPUS=$val ;;
    --cpus-per-task) need_value "$@"; CPUS=$val ;;
    --python) need_value "$@"; PYTHON=$val ;;
    --env) need_value "$@"; ENVS+=("$val") ;;
    --dry-run) ((!inline)) || die_usage "--dry-run takes no value"; DRY_RUN=1 ;;
    -*) die_usage "unknown flag: $opt" ;;
    *) die_usage "unexpected argument: $opt (jaxtrain's arguments go after '--')" ;;
  esac
  shift "$shift_by"
done

[[ -n $CONFIG ]] || die_usage "missing required flag --config"
[[ -n $WORKDIR ]] || die_usage "missing required flag --workdir"
case $COMMAND in train|sweep|lr-find) ;; *)
  die_usage "--command=$COMMAND: expected train, sweep or lr-find" ;; esac
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die_usage "--nodes=$NODES: expected a positive integer"
# SLURM writes GPU counts per node as e.g. '8' or '8(x2)'; take the number.
GPUS=${GPUS%%(*}
[[ $GPUS =~ ^[1-9][0-9]*$ ]] ||
  die_usage "--gpus-per-node='$GPUS': expected a positive integer (sbatch --gpus-per-node=G sets \$SLURM_GPUS_ON_NODE)"
case $TASKS in
  per-gpu) PER_NODE=$GPUS ;;
  per-node) PER_NODE=1 ;;
  *) die_usage "--tasks=$TASKS: expected per-gpu or per-node" ;;
esac
if [[ -z $CPUS && -n ${SLURM_CPUS_ON_NODE:-} ]]; then
  CPUS=$((SLURM_CPUS_ON_NODE / PER_NODE))
fi
for kv in "${ENVS[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die_usage "--env=$kv: expected KEY=VALUE"
done

# srun's task variables give each process its id, the coordinator (the first
# node) and its GPUs: jaxtrain/parallel/cluster.py.
SRUN=(srun "--nodes=$NODES" "--ntasks-per-node=$PER_NODE" --kill-on-bad-exit=1)
if [[ -n $CPUS ]]; then
  SRUN+=("--cpus-per-task=$CPUS")
fi
if ((${#ENVS[@]})); then
  SRUN+=(env "${ENVS[@]}")
fi
SRUN+=("$PYTHON" -m jaxtrain.cli "$COMMAND" "--config=$CONFIG" "--workdir=$WORKDIR"
       "${ARGS[@]}")

if ((DRY_RUN)); then
  line=""
  for w in "${SRUN[@]}"; do line+="${line:+ }$(shquote "$w")"; done
  printf '%s\n' "$line"
  exit 0
fi

[[ -n ${SLURM_JOB_ID:-} ]] || die_usage "not inside a SLURM job: submit with sbatch (or use --dry-run)"

REQUEUE=0
# shellcheck disable=SC2317,SC2329  # called by the USR1 trap (SC2329: shellcheck >= 0.11)
near_limit() {
  REQUEUE=1
  echo "$PROG: time limit near: SIGTERM to jaxtrain (checkpoint, exit), then requeue" >&2
  scancel --signal=TERM "$SLURM_JOB_ID"
}
trap near_limit USR1

echo "$PROG: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): ${SRUN[*]}" >&2
"${SRUN[@]}" &
step=$!
# A trapped signal interrupts `wait` (status > 128) while srun still runs: wait again.
rc=0
while true; do
  wait "$step" && rc=0 || rc=$?
  if ((rc > 128)) && kill -0 "$step" 2>/dev/null; then
    continue
  fi
  break
done

# jaxtrain exits 143 (128 + SIGTERM) when it stopped on the signal with a checkpoint;
# 0 means it finished anyway, anything else that it failed.
if ((REQUEUE)) && ((rc == 143)); then
  echo "$PROG: jaxtrain stopped with a checkpoint; requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
