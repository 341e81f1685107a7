#!/usr/bin/env bash
# Start `jaxtrain train` (or `sweep`, `lr-find`) on every worker of a TPU VM slice at
# once, in the background; stream the workers' logs back (--tail) or stop the run with
# SIGTERM (--stop).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() {
  cat <<EOF
Usage: $PROG --project=P --zone=Z --name=NAME --config=FILE --workdir=gs://BUCKET/DIR [options] [-- --config.SECTION.FIELD=VALUE ...]
       $PROG --project=P --zone=Z --name=NAME --command=sweep|lr-find --config=FILE --workdir=DIR [options] [-- ARGS ...]
       $PROG --project=P --zone=Z --name=NAME --tail [--run=RUN] [--lines=N] [--worker=W]
       $PROG --project=P --zone=Z --name=NAME --stop [--run=RUN]

Start 'jaxtrain COMMAND --config=FILE --workdir=DIR [args]' (COMMAND: train, sweep
or lr-find) on all workers at once (gcloud compute tpus tpu-vm ssh --worker=all),
detached with nohup/setsid so a dropped ssh connection does not stop it. Each worker appends its output to
~/$LOG_DIR/RUN.log and keeps the process id in ~/$LOG_DIR/RUN.pid. Multi-host
start-up needs no flags on Cloud TPU. Arguments after '--' are passed to jaxtrain,
each one as a single argument whatever it contains (spaces, quotes, commas,
brackets): config overrides --config.SECTION.FIELD=VALUE and, for lr-find, its own
flags ($LR_FIND_FLAGS_HELP). Running the same command again with the same
--workdir resumes (train: from the newest complete checkpoint; sweep: skipping the
trials already in its results). A worker that still runs a jaxtrain job refuses to
start another (the TPU can only be used by one process).

sweep and lr-find write their results from process 0, to gs://BUCKET/PATH (kept
when the slice goes; a sweep resumed on another slice skips its finished trials) or
to a directory on the workers' disks (a relative path is under --remote-dir; the
results are then on worker 0 only), e.g.
  gcloud compute tpus tpu-vm scp --worker=0 NAME:jaxtrain/DIR/report.md . --zone=Z

Flags:
$COMMON_HELP
$SSH_HELP
  --command=COMMAND     jaxtrain subcommand to start: train, sweep or lr-find [train]
  --config=FILE         experiment (or study) module, relative to the source directory
                        on the workers (e.g. experiments/resnet50_imagenet_lars.py)
  --workdir=DIR         train: run directory shared by all workers, gs://BUCKET/PATH;
                        sweep, lr-find: gs://BUCKET/PATH or a directory on the workers
  --run=RUN             run name, for the log and pid files [last part of --workdir]
  --env=KEY=VALUE       set an environment variable for jaxtrain (repeatable),
                        e.g. --env=TFDS_DATA_DIR=gs://bucket/tfds
  --remote-dir=DIR      source directory on each worker, relative to \$HOME [$DEFAULT_REMOTE_DIR]
  --venv=DIR            virtual environment on each worker, relative to \$HOME [$DEFAULT_VENV]
  --tail                do not start anything: stream the logs of all workers, each
                        line prefixed with [worker hostname], until the run ends
                        or Ctrl-C (RUN's log, or each worker's newest log without --run)
  --lines=N             with --tail: start with the last N lines of each log [100]
  --worker=W            with --tail: only these workers, e.g. 0 or 0,3 [all]
  --stop                send SIGTERM to the run on all workers (RUN, or every run
                        started by this script without --run): jaxtrain saves a
                        checkpoint at the next step and exits
EOF
}

COMMAND=train CONFIG="" WORKDIR="" RUN_NAME=""
# `jaxtrain lr-find` flags that may follow '--' (jaxtrain/study/lr_find.py add_flags).
LR_FIND_FLAGS=(min_lr max_lr num_steps smoothing divergence_factor optimizer)
LR_FIND_FLAGS_HELP=$(printf -- '--%s, ' "${LR_FIND_FLAGS[@]}")
LR_FIND_FLAGS_HELP=${LR_FIND_FLAGS_HELP%, }
REMOTE_DIR=$DEFAULT_REMOTE_DIR
VENV=$DEFAULT_VENV
TAIL=0 STOP=0 LINES=100 WORKER=""
ENVS=() OVERRIDES=()

while (($#)); do
  parse_opt "$@"
  case $OPT in
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    --internal-ip) no_value; INTERNAL_IP=1 ;;
    --command) want_value; COMMAND=$VAL ;;
    --config) want_value; CONFIG=$VAL ;;
    --workdir) want_value; WORKDIR=$VAL ;;
    --run) want_value; RUN_NAME=$VAL ;;
    --env) want_value; ENVS+=("$VAL") ;;
    --remote-dir) want_value; REMOTE_DIR=$VAL ;;
    --venv) want_value; VENV=$VAL ;;
    --tail) no_value; TAIL=1 ;;
    --lines) want_value; LINES=$VAL ;;
    --worker) want_value; WORKER=$VAL ;;
    --stop) no_value; STOP=1 ;;
    --config.*) die_usage "config override $OPT must come after '--', e.g. $PROG ... -- $1" ;;
    *) parse_common || unknown_opt ;;
  esac
  shift "$NSHIFT"
done

require_common
REMOTE_DIR=$(check_remote_path --remote-dir "$REMOTE_DIR")
VENV=$(check_remote_path --venv "$VENV")
((TAIL + STOP <= 1)) || die_usage "--tail and --stop are mutually exclusive"
LAUNCH=$((!TAIL && !STOP))
if ((!TAIL)); then
  [[ -z $WORKER ]] || die_usage "--worker only applies to --tail (a run starts on all workers)"
fi
[[ $LINES =~ ^[0-9]+$ ]] || die_usage "--lines=$LINES: expected a number of lines"
WORKER=${WORKER:-all}
[[ $WORKER =~ ^(all|[0-9]+(,[0-9]+)*)$ ]] || die_usage "--worker=$WORKER: expected all, N or N,M,..."

case $COMMAND in
  train|sweep|lr-find) ;;
  *) die_usage "--command=$COMMAND: expected train, sweep or lr-find" ;;
esac

# check_arg ARG: usage error unless ARG (after '--') is one jaxtrain COMMAND takes.
check_arg() {
  local f
  [[ $1 == --config.?*=* ]] && return
  if [[ $COMMAND == lr-find ]]; then
    for f in "${LR_FIND_FLAGS[@]}"; do
      [[ $1 == --$f=* ]] && return
    done
    die_usage "argument '$1' after '--': expected --config.SECTION.FIELD=VALUE or one of $LR_FIND_FLAGS_HELP"
  fi
  die_usage "override '$1' after '--': expected --config.SECTION.FIELD=VALUE"
}

if ((LAUNCH)); then
  require "$CONFIG" --config
  require "$WORKDIR" --workdir
  # sweep and lr-find: only process 0 writes, so a local workdir works (on worker 0).
  if [[ $COMMAND == train && $WORKDIR != gs://* ]]; then
    warn "--workdir=$WORKDIR is not on gs://: the workers of a pod share no local disk"
  fi
  for kv in ${ENVS[@]+"${ENVS[@]}"}; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die_usage "--env=$kv: expected KEY=VALUE"
  done
  for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
    check_arg "$o"
  done
else
  [[ $COMMAND == train ]] || die_usage "--command only applies when starting a run"
  [[ -z ${OVERRIDES[*]-} ]] || die_usage "config overrides after '--' only apply when starting a run"
  [[ -z ${ENVS[*]-} ]] || die_usage "--env only applies when starting a run"
fi
if [[ -z $RUN_NAME && -n $WORKDIR ]]; then
  RUN_NAME=${WORKDIR%/}
  RUN_NAME=${RUN_NAME##*/}
fi
if [[ -n $RUN_NAME && ! $RUN_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
  die_usage "--run=$RUN_NAME: expected letters, digits and '._-' (set --run when the last part of --workdir is not a valid name)"
fi

LOGS="\"\$HOME\"/$LOG_DIR"   # shell words on the worker; the names are checked safe
# shellcheck disable=SC2016  # expanded on the worker, not here
HOST='$(hostname)'

launch_script() {
  local log="$LOGS/$RUN_NAME.log" pid="$LOGS/$RUN_NAME.pid"
  local -a cmd=()
  [[ -z ${ENVS[*]-} ]] || cmd=(env "${ENVS[@]}")
  cmd+=(jaxtrain "$COMMAND" --config="$CONFIG" --workdir="$WORKDIR" ${OVERRIDES[@]+"${OVERRIDES[@]}"})
  printf '%s' "set -eu; mkdir -p $LOGS; "
  printf '%s' "for f in $LOGS/*.pid; do if [ -f \"\$f\" ] && kill -0 \"\$(cat \"\$f\")\" 2>/dev/null; then "
  printf '%s' "echo \"$HOST: jaxtrain is still running (\$f); stop it first with run.sh --stop\" >&2; exit 1; fi; done; "
  printf '%s' "cd \"\$HOME\"/$REMOTE_DIR && [ -x \"\$HOME\"/$VENV/bin/jaxtrain ] || "
  printf '%s' "{ echo \"$HOST: no ~/$REMOTE_DIR or ~/$VENV/bin/jaxtrain: run setup.sh first\" >&2; exit 1; }; "
  printf '%s' "export PATH=\"\$HOME\"/$VENV/bin:\"\$PATH\" PYTHONUNBUFFERED=1; "
  printf '%s' "echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) $HOST: start run $RUN_NAME (jaxtrain $COMMAND)\" >> $log; "
  printf '%s' "nohup setsid $(shjoin "${cmd[@]}") >> $log 2>&1 < /dev/null & "
  printf '%s' "echo \$! > $pid; echo \"$HOST: started run $RUN_NAME (jaxtrain $COMMAND, pid \$!), log ~/$LOG_DIR/$RUN_NAME.log\""
}

stop_script() {
  printf '%s' "n=0; for f in $LOGS/${RUN_NAME:-*}.pid; do [ -f \"\$f\" ] || continue; p=\$(cat \"\$f\"); "
  printf '%s' "if kill -0 \"\$p\" 2>/dev/null; then kill -TERM \"\$p\"; n=\$((n+1)); "
  printf '%s' "echo \"$HOST: sent SIGTERM to pid \$p (\$f)\"; fi; done; "
  printf '%s' "[ \"\$n\" -gt 0 ] || echo \"$HOST: no running jaxtrain run\""
}

tail_script() {
  local pick
  if [[ -n $RUN_NAME ]]; then
    pick="f=$RUN_NAME.log"
  else
    pick="f=\$(ls -t -- *.log 2>/dev/null | head -n 1)"
  fi
  printf '%s' "cd $LOGS 2>/dev/null || { echo \"$HOST: no ~/$LOG_DIR\" >&2; exit 1; }; $pick; "
  printf '%s' "[ -n \"\$f\" ] && [ -f \"\$f\" ] || { echo \"$HOST: no log \$f\" >&2; exit 1; }; "
  printf '%s' "p=\${f%.log}.pid; w=; [ -f \"\$p\" ] && w=--pid=\$(cat \"\$p\"); "
  printf '%s' "h=$HOST; tail -n $LINES -F \$w \"\$f\" | awk -v h=\"\$h\" '{ print \"[\" h \"] \" \$0; fflush() }'"
}

if ((TAIL)); then
  ssh_flags
  run gcloud compute tpus tpu-vm ssh "$NAME" "${SSH_FLAGS[@]}" --worker="$WORKER" \
    --command "$(tail_script)"
elif ((STOP)); then
  on_all_workers "$(stop_script)"
else
  on_all_workers "$(launch_script)"
fi
