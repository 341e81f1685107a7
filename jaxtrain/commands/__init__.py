"""The `jaxtrain` subcommands' handlers, one module each (`jaxtrain.cli` lists them).

  train          train (or resume) an experiment
  compile        ahead-of-time compile for a TPU topology (`jaxtrain.aot`)
  optim_summary  per parameter, what the optimizer config applies
  sweep          run a scaling study (`jaxtrain.study.sweep`), then its report
  report         a sweep's plots and report.md (`jaxtrain.study.report`)
  lr_find        the learning-rate range test (`jaxtrain.study.lr_find`)
  flags          flags several commands share; multihost: joining the other hosts

Each module has `add_flags(parser)` and `handle(args, config) -> exit code`: the
handler unpacks the flags and calls the library with explicit arguments (no
module below this package takes an `argparse.Namespace`). At module level they
import only argparse and light modules: `jaxtrain --help` and config errors import
no JAX; the library is imported when a handler runs.
"""
