"""The `jaxtrain` command: subcommands over experiment modules, with overrides.

    jaxtrain train --config=experiments/digits_cnn.py --workdir=/tmp/digits \\
        --config.optimizer.learning_rate=0.2 --config.train.num_steps=500

Every subcommand that takes `--config` accepts `--config.a.b=value` overrides. User
errors (bad config, bad flags) print one line naming the field and exit with code 2,
before anything compiles; a run stopped by a non-finite loss or a failed checkpoint
write exits with code 1 and one line saying why; a command stopped by a signal exits
with 128 + its number (SIGTERM 143, Ctrl-C 130), `train` and `sweep` after saving
(`jaxtrain.preemption`); 0 means the command did all its work.

A subcommand is a `Command`: a function adding its flags and a function running it
with (args, config). Commands live beside what they drive; this file only lists them.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, Sequence

from jaxtrain.errors import ConfigError
# Plain argparse: building the parser imports no JAX (`jaxtrain --help` stays fast).
from jaxtrain.study import lr_find_flags as lr_find_flags_lib

OVERRIDE_HELP = """\
config overrides:
  --config.SECTION.FIELD=VALUE
                        set any field of the experiment's config, e.g.
                        --config.optimizer.learning_rate=0.2
                        --config.train.batch_size=256 --config.mesh.data=-1
                        Values are parsed as Python literals when the field is not
                        a string; an unknown field is an error that lists the
                        fields of its section.
"""


@dataclasses.dataclass(frozen=True)
class Command:
  name: str
  help: str
  add_flags: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace, Any], int | None]
  takes_config: bool = True  # --config=FILE plus --config.x=y overrides
  # (spec, overrides) -> validated config; None: `load_config` (an experiment).
  load: Callable[[str, Sequence[str]], Any] | None = None
  description: str = ""  # `COMMAND --help` text; "": `help`
  # SIGTERM/Ctrl-C: True, finish the step and save, then exit 128 + the signal
  # number; False, nothing to save: exit at once with that code (jaxtrain.preemption).
  saves_on_signal: bool = False


def add_config_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", required=True, metavar="FILE[:ARG]",
                 help="experiment module defining get_config(arg=None), e.g. "
                 "experiments/digits_cnn.py; ':ARG' is passed to get_config")


def add_workdir_flag(p: argparse.ArgumentParser,
                     help: str = "where checkpoints, metrics.jsonl and TensorBoard "  # pylint: disable=redefined-builtin
                     "files go; re-using it resumes the run") -> None:
  p.add_argument("--workdir", required=True, metavar="DIR", help=help)


def add_multihost_flags(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("multi-host (omit on one machine; detected under srun, "
                           "mpirun, indexed Kubernetes Jobs and on Cloud TPU)")
  g.add_argument("--coordinator_address", metavar="HOST:PORT",
                 help="address of process 0, for jax.distributed.initialize")
  g.add_argument("--num_processes", type=int, metavar="N",
                 help="total number of processes")
  g.add_argument("--process_id", type=int, metavar="I",
                 help="this process's index, 0..N-1")


def _train_flags(p: argparse.ArgumentParser) -> None:
  add_workdir_flag(p)
  add_multihost_flags(p)


def capture_diagnostics(args: argparse.Namespace) -> None:
  """Library tracebacks go to the workdir's log file, not the console; on many
  hosts, a process that dies is named by the others (`parallel.peers`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import checkpoint, diagnostics  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import peers  # pylint: disable=g-import-not-at-top
  diagnostics.capture(args.workdir, jax.process_index())
  peers.watch(lambda: checkpoint.describe_intact(args.workdir))


def _train_only_flags(p: argparse.ArgumentParser) -> None:
  _train_flags(p)
  p.add_argument("--allow_config_change", default="", metavar="FIELD,...",
                 help="resume although these config fields (or sections, e.g. "
                 "optimizer) differ from the checkpoint's config, e.g. "
                 "train.num_steps to train longer; other changed fields that alter "
                 "the result are refused")


def _train(args: argparse.Namespace, config: Any) -> int:
  init_distributed(args)
  capture_diagnostics(args)
  from jaxtrain import runner  # pylint: disable=g-import-not-at-top
  allow = [f for f in args.allow_config_change.split(",") if f]
  runner.train(config, args.workdir, name=args.config, allow_config_change=allow)
  return 0


def _sweep_flags(p: argparse.ArgumentParser) -> None:
  add_workdir_flag(p, "where the study's results go: results.json and results.csv "
                   "(one record per trial, with its learning curve), plots, report.md "
                   "and, for a local DIR, a compilation cache; local or gs://. "
                   "Re-using it skips the trials already in results.json")
  add_multihost_flags(p)


def _compile_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--topology", required=True, metavar="NAME",
                 help="TPU topology, e.g. v4:8x8x16, v5p:8x8x16, v3:16x32, "
                 "v5e:16x16 (needs jaxtrain[tpu]), or cpu:N for N local CPU devices "
                 "(jaxtrain sets the device count itself: no XLA_FLAGS needed)")
  p.add_argument("--memory_gib", type=float, metavar="GIB",
                 help="memory per device to fit in (default: the chip's HBM)")
  p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")


def _cpu_device_count(topology: str) -> None:
  """`--topology=cpu:N`: gives this process N CPU devices, before JAX starts them.

  Same effect as XLA_FLAGS=--xla_force_host_platform_device_count=N, which it takes
  precedence over. Once JAX has started its backends (a library caller) the count
  cannot change; `aot` then reports a count that is too small.
  """
  count = topology[len("cpu:"):]
  if not topology.startswith("cpu:") or not count.isdigit():
    return
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.config.update("jax_num_cpu_devices", int(count))
  except RuntimeError:  # backends already started
    pass


def _commands() -> list[Command]:
  """Every subcommand, in the order `jaxtrain --help` lists them."""
  # Imported lazily by each run function: `jaxtrain --help` stays fast.
  def optim_summary(args, config):
    from jaxtrain import optim_summary as m  # pylint: disable=g-import-not-at-top
    return m.run(args, config)

  def sweep(args, config):
    init_distributed(args)
    capture_diagnostics(args)
    from jaxtrain.study import sweep as m  # pylint: disable=g-import-not-at-top
    return m.main(args, config)

  def report(args, config):
    from jaxtrain.study import report as m  # pylint: disable=g-import-not-at-top
    return m.run(args, config)

  def lr_find(args, config):
    init_distributed(args)
    capture_diagnostics(args)
    from jaxtrain.study import lr_find as m  # pylint: disable=g-import-not-at-top
    return m.run(args, config)

  def lr_find_flags(p):
    lr_find_flags_lib.add_flags(p)
    add_multihost_flags(p)

  def load_study(spec, overrides, require_study=True):
    from jaxtrain.study import grid  # pylint: disable=g-import-not-at-top
    return grid.load(spec, overrides, require_study)

  def compile_(args, config):
    _cpu_device_count(args.topology)
    from jaxtrain import aot  # pylint: disable=g-import-not-at-top
    return aot.run(args, config)

  return [
      Command("train", "train (or resume) an experiment in --workdir",
              _train_only_flags, _train, saves_on_signal=True),
      Command("compile", "compile the train step for a TPU topology without the "
              "hardware: memory per device vs HBM, FLOPs, collectives",
              _compile_flags, compile_),
      Command("optim-summary", "show, per parameter, the weight decay, trust "
              "ratio, learning-rate multiplier and freezing the config applies",
              lambda p: None, optim_summary),
      Command("sweep", "run (or resume) a scaling study: trials over batch sizes, "
              "optimizers and learning rates, steps to target, plots",
              _sweep_flags, sweep, load=load_study, saves_on_signal=True),
      Command("report", "regenerate a sweep's plots and Markdown summary from DIR",
              lambda p: p.add_argument("dir", metavar="DIR",
                                       help="a sweep's --workdir"),
              report, takes_config=False),
      Command("lr-find", "learning-rate range test: loss vs exponentially growing "
              "LR, plot and suggested LR",
              lr_find_flags, lr_find,
              load=lambda spec, o: load_study(spec, o, require_study=False),
              description=lr_find_flags_lib.DESCRIPTION),
  ]


def _parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jaxtrain", description="JAX functional training toolkit for TPU/GPU "
      "scale-out.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for c in commands:
    p = sub.add_parser(c.name, help=c.help,
                       description=c.description or c.help[:1].upper() + c.help[1:],
                       epilog=OVERRIDE_HELP if c.takes_config else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if c.takes_config:
      add_config_flag(p)
    c.add_flags(p)
  return parser


def _split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]):
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognized argument: {item}")
    overrides.append(item[len("--config."):])
  return args, overrides


def load_config(spec: str, overrides: Sequence[str]):
  """Loads, overrides and validates an experiment config."""
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(spec)
  config_lib.apply_overrides(config, overrides)
  return config_lib.validate(config, given=config_lib.overridden(overrides))


def init_distributed(args: argparse.Namespace) -> None:
  """Joins the other processes of a multi-host run: explicit flags, or the
  launcher's variables (SLURM, Open MPI, Kubernetes, Cloud TPU); see
  `jaxtrain.parallel.cluster`."""
  from jaxtrain.parallel import cluster  # pylint: disable=g-import-not-at-top
  cluster.initialize(args)


def main(argv: Sequence[str] | None = None) -> int:
  from jaxtrain import preemption  # pylint: disable=g-import-not-at-top
  preemption.install()  # first: a SIGTERM during start-up still ends cleanly
  try:
    return _main(argv)
  finally:
    preemption.uninstall()  # a caller that goes on gets its own handlers back


def _main(argv: Sequence[str] | None) -> int:
  from jaxtrain import preemption  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import peers  # pylint: disable=g-import-not-at-top
  watcher = preemption.installed()
  commands = _commands()
  parser = _parser(commands)
  args, overrides = _split_overrides(parser, sys.argv[1:] if argv is None else argv)
  command = next(c for c in commands if c.name == args.command)
  watcher.graceful, watcher.stopped_at = command.saves_on_signal, None
  if overrides and not command.takes_config:
    parser.error(f"'{command.name}' takes no --config.* overrides")
  try:
    load = command.load or load_config
    config = load(args.config, overrides) if command.takes_config else None
    code = command.run(args, config) or 0
    peers.farewell()  # on many hosts: this process ends on purpose
    if watcher.stopped_at is not None:  # saved, but not finished: 143 or 130
      return preemption.exit_code(watcher.signum)
    return code
  except ConfigError as e:
    peers.farewell()
    print(f"jaxtrain: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    peers.wait_for_verdict()  # a peer's death, if that is the cause, is named
    from jaxtrain.checkpoint import CheckpointCorruptError, CheckpointWriteError  # pylint: disable=g-import-not-at-top
    from jaxtrain.runner import TrainingHalted  # pylint: disable=g-import-not-at-top
    from jaxtrain import diagnostics  # pylint: disable=g-import-not-at-top
    if not isinstance(e, (TrainingHalted, CheckpointWriteError,
                          CheckpointCorruptError)):
      raise
    peers.farewell()
    details = diagnostics.captured_to()
    print(f"jaxtrain: training stopped: {e}"
          + (f" (details: {details})" if details else ""), file=sys.stderr)
    return diagnostics.exit_promptly(1)


if __name__ == "__main__":
  sys.exit(main())
