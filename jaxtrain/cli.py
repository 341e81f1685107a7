"""The `jaxtrain` command: subcommands over experiment modules, with overrides.

    jaxtrain train --config=experiments/digits_cnn.py --workdir=/tmp/digits \\
        --config.optimizer.learning_rate=0.2 --config.train.num_steps=500

Every subcommand that takes `--config` accepts `--config.a.b=value` overrides. User
errors (bad config, bad flags) print one line naming the field and exit with code 2,
before anything compiles; a run stopped by a non-finite loss or a failed checkpoint
write exits with code 1 and one line saying why; a command stopped by a signal exits
with 128 + its number (SIGTERM 143, Ctrl-C 130), `train` and `sweep` after saving
(`jaxtrain.preemption`); 0 means the command did all its work.

A subcommand is a `Command`: a function adding its flags and a handler called with
(args, config). Each lives in its own module of `jaxtrain.commands` (`handle` unpacks
the flags and calls the library with explicit arguments); this file only lists
them, parses the command line and maps errors to exit codes.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, Sequence

# Plain argparse: building the parser imports no JAX (`jaxtrain --help` stays fast).
from jaxtrain.commands import compile as compile_
from jaxtrain.commands import eval as eval_
from jaxtrain.commands import lr_find, optim_summary, report, sweep, train
from jaxtrain.commands.flags import add_config_flag
from jaxtrain.errors import ConfigError

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
  handle: Callable[[argparse.Namespace, Any], int | None]
  takes_config: bool = True  # --config=FILE plus --config.x=y overrides
  # (spec, overrides) -> validated config; None: `load_config` (an experiment).
  load: Callable[[str, Sequence[str]], Any] | None = None
  description: str = ""  # `COMMAND --help` text; "": `help`
  # SIGTERM/Ctrl-C: True, finish the step and save, then exit 128 + the signal
  # number; False, nothing to save: exit at once with that code (jaxtrain.preemption).
  saves_on_signal: bool = False


def _commands() -> list[Command]:
  """Every subcommand, in the order `jaxtrain --help` lists them."""
  return [
      Command("train", "train (or resume) an experiment in --workdir",
              train.add_flags, train.handle, saves_on_signal=True),
      Command("eval", "evaluate a checkpoint of a run in --workdir (any step, "
              "split, EMA) without touching the run; writes eval_<step>.json",
              eval_.add_flags, eval_.handle, description=eval_.DESCRIPTION),
      Command("compile", "compile the train step for a TPU topology without the "
              "hardware: memory per device vs HBM, FLOPs, collectives",
              compile_.add_flags, compile_.handle),
      Command("optim-summary", "show, per parameter, the weight decay, trust "
              "ratio, learning-rate multiplier and freezing the config applies",
              optim_summary.add_flags, optim_summary.handle),
      Command("sweep", "run (or resume) a scaling study: trials over batch sizes, "
              "optimizers and learning rates, steps to target, plots",
              sweep.add_flags, sweep.handle, load=sweep.load_study,
              saves_on_signal=True),
      Command("report", "regenerate a sweep's plots and Markdown summary from DIR",
              report.add_flags, report.handle, takes_config=False),
      Command("lr-find", "learning-rate range test: loss vs exponentially growing "
              "LR, plot and suggested LR",
              lr_find.add_flags, lr_find.handle,
              load=lambda spec, o: sweep.load_study(spec, o, require_study=False),
              description=lr_find.DESCRIPTION),
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
    args.config_overrides = overrides  # recorded by commands that write results
    code = command.handle(args, config) or 0
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
