"""jaxtrain.study: large-batch scaling studies (steps to a target vs batch size).

  grid        study config (experiment + `study` section) -> trials and groups
  vectorized  trials differing only in hyperparameters as one vmapped program
  sweep       run_study: runs the trials, steps-to-target (`jaxtrain sweep`)
  results     results.json / results.csv, read and written (resumable)
  rerun       what a re-run may reuse of the stored results
  targets     target parsing, steps-to-target, best trial per cell
  report      `jaxtrain report`: Markdown summary and scaling regimes
  critical_batch  measured knee vs the noise scale's predicted critical batch
  plots       steps-to-target, best LR, learning curves, LR range test (PNG)
  lr_find     `jaxtrain lr-find`: the learning-rate range test

Submodules are imported where used (the CLI stays fast to start); the commands'
handlers are in `jaxtrain.commands`.
"""
