"""Plug-in optimizers: a factory defined here goes through every command.

`optimizer.name = "test_optim_plugins:heavy_ball"` names the factory below (this
module is importable under pytest: its directory is on sys.path); a factory
registered in an experiment file (`@jaxtrain.optim.register`) is the other way in.
"""
import json
import os
import textwrap

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtrain import cli, optim, runner
from jaxtrain import config as config_lib
from jaxtrain.data import pipeline
from jaxtrain.errors import ConfigError
from jaxtrain.study import grid, vectorized
from jaxtrain.study.grid import study_defaults

PATH = "test_optim_plugins:heavy_ball"
STEPS = 12


def heavy_ball(learning_rate, momentum=0.9, nesterov=False):
  """Polyak's heavy ball, m <- momentum * m + g, update -lr * m: Optax's own
  pieces, so a run with it must equal the built-in `momentum` optimizer's."""
  return optax.chain(optax.trace(momentum, nesterov),
                     optax.scale_by_learning_rate(learning_rate))


EXPERIMENT = """\
from jaxtrain.config import base_config


def get_config(arg=None):
  c = base_config()
  c.data.source = "arrays"
  c.model.name = "cnn"
  c.model.features = (8,)
  c.model.hidden = 16
  c.optimizer.name = "{name}"
  c.optimizer.learning_rate = 0.05
  c.optimizer.schedule.name = "warmup_cosine"
  c.optimizer.schedule.warmup_steps = 3
  c.train.batch_size = 32
  c.train.eval_batch_size = 360
  c.train.num_steps = {steps}
  c.train.log_every = c.train.eval_every = 4
  c.checkpoint.every = 0
  return c
"""

REGISTERED = """\
import optax
import jaxtrain


@jaxtrain.optim.register("experiment_heavy_ball")
def heavy_ball(learning_rate, momentum=0.9):
  return optax.chain(optax.trace(momentum), optax.scale_by_learning_rate(learning_rate))


"""


def _experiment(tmp_path, name, registered=False):
  path = tmp_path / f"plugin_{name.replace(':', '_')}.py"
  path.write_text((REGISTERED if registered else "")
                  + EXPERIMENT.format(name=name, steps=STEPS))
  return str(path)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_weight_decay_wraps_the_plugin_as_decoupled_decay():
  """-lr_t * (m_t + wd * w) on decayed (2-D) params, -lr_t * m_t on the bias,
  computed in numpy from the heavy-ball recursion."""
  c = optim.default_config()
  c.name, c.learning_rate, c.weight_decay = PATH, 0.1, 0.01
  c.kwargs.momentum = 0.5
  c.schedule.name, c.schedule.warmup_steps = "warmup_cosine", 2
  total = 6
  tx, lr = optim.build(c, total)
  params = {"w": jnp.full((2, 2), 1.0), "b": jnp.full((2,), 1.0)}
  state = tx.init(params)
  w, b, m_w, m_b = 1.0, 1.0, 0.0, 0.0
  for t in range(4):
    g = {"w": params["w"] * 0.3, "b": params["b"] * 0.2}
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    rate = float(lr(t))
    m_w, m_b = 0.5 * m_w + 0.3 * w, 0.5 * m_b + 0.2 * b
    w, b = w - rate * (m_w + 0.01 * w), b - rate * m_b
    np.testing.assert_allclose(params["w"], w, rtol=1e-6)
    np.testing.assert_allclose(params["b"], b, rtol=1e-6)


def test_registered_factory_builds_and_builtin_names_are_refused():
  @optim.register("test_plugins_sign_sgd")
  def sign_sgd(learning_rate):
    return optax.chain(optax.scale_by_sign(), optax.scale_by_learning_rate(
        learning_rate))
  assert "test_plugins_sign_sgd" in optim.registered_names()
  c = optim.default_config()
  c.name, c.learning_rate, c.schedule.name = "test_plugins_sign_sgd", 0.5, "constant"
  tx, _ = optim.build(c, 3)
  g = {"w": jnp.asarray([2.0, -3.0])}
  updates, _ = tx.update(g, tx.init(g), g)
  np.testing.assert_allclose(updates["w"], [-0.5, 0.5])
  for bad in ("adam", "pkg.mod:factory"):
    with pytest.raises(ConfigError, match="optimizer.name"):
      optim.register(bad)


def test_plugin_trains_digits_as_the_builtin_it_rebuilds(tmp_path, capsys):
  """The plug-in heavy ball (and the same factory registered in an experiment
  file) trains exactly as the built-in momentum optimizer."""
  runs = {}
  for name, registered in (("momentum", False), (PATH, False),
                           ("experiment_heavy_ball", True)):
    workdir = tmp_path / name.replace(":", "_")
    code = cli.main(["train", f"--config={_experiment(tmp_path, name, registered)}",
                     f"--workdir={workdir}"])
    assert code == 0, capsys.readouterr().err[-2000:]
    runs[name] = _metrics(workdir)
  want = runs["momentum"]
  assert want[-1]["train/loss"] < want[0]["train/loss"]
  for name in (PATH, "experiment_heavy_ball"):
    assert [r["step"] for r in runs[name]] == [r["step"] for r in want]
    for got, ref in zip(runs[name], want):
      for key in ("train/loss", "eval/loss", "eval/accuracy"):
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-6,
                                   err_msg=f"{name} step {got['step']} {key}")


def test_optim_summary_shows_the_plugin_and_its_masks(tmp_path, capsys):
  code = cli.main(["optim-summary", f"--config={_experiment(tmp_path, PATH)}",
                   "--config.optimizer.kwargs.momentum=0.8",
                   "--config.optimizer.weight_decay=1e-4",
                   "--config.optimizer.freeze=('dense/bias',)"])
  out = capsys.readouterr().out
  assert code == 0, out
  first = out.splitlines()[0]
  assert first == (f"optimizer: {PATH} (plug-in test_optim_plugins.heavy_ball, "
                   "kwargs {'momentum': 0.8})")
  rows = {line.split()[0]: line.split()[-4:] for line in out.splitlines()[2:-1]}
  assert rows["dense/kernel"] == ["yes", "-", "1", "-"]  # decayed, no trust ratio
  assert rows["dense/bias"] == ["-", "-", "1", "yes"]   # 1-D, frozen


def _study(name):
  """Momentum x weight decay x 2 learning rates of the plug-in at batch 32: one
  vectorized group of 8 trials."""
  c = config_lib.load(_write(EXPERIMENT.format(name="momentum", steps=STEPS)))
  s = study_defaults()
  s.batch_sizes, s.optimizers = (32,), ("hb",)
  s.optimizer_configs = ml_collections.ConfigDict(
      {"hb": {"name": name, "learning_rate": 0.05}})
  s.lr_rule, s.lr_grid_center, s.lr_grid = "grid", "none", (1.0, 2.0)
  s.momentum, s.weight_decay = (0.8, 0.9), (0.0, 1e-3)
  s.target, s.eval_every, s.max_steps = "eval/accuracy >= 0.99", 4, 8
  c.study = s
  return c


_FILES = []


def _write(text):
  import tempfile  # pylint: disable=g-import-not-at-top
  f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
  f.write(text)
  f.close()
  _FILES.append(f.name)
  return f.name


def _vectorized_log(configs, steps, every):
  group = vectorized.build_group(configs)
  assert group.size == len(configs)
  its = [pipeline.train_iterator(group.exp.train_source, 32, s) for s in group.seeds]
  logs = [[] for _ in configs]
  for step in range(1, steps + 1):
    group.step([next(it) for it in its])
    if step % every == 0:
      for log, tr, ev in zip(logs, group.train_metrics(), group.evaluate()):
        log.append({"step": step, **tr, **ev})
  for it in its:
    it.close()
  return logs


def test_vectorized_plugin_trials_equal_one_by_one_runs(tmp_path):
  """Learning rate, the factory's momentum (optimizer.kwargs.momentum, injected)
  and the decoupled weight decay differ inside one vectorized group."""
  trials = grid.make_trials(_study(PATH), 1437)
  assert [t.config.optimizer.kwargs.momentum for t in trials[:2]] == [0.8, 0.8]
  groups = grid.groups(trials, 16, lambda t: vectorized.supports_trial(t.config))
  assert len(groups) == 1 and len(groups[0]) == 8
  configs = [t.config for t in trials]
  assert vectorized.injected_kwargs(configs) == ("momentum",)
  vec = _vectorized_log(configs, 8, 4)
  # One-by-one: the last trial (lr 0.1, momentum 0.9, weight decay 1e-3).
  i = len(trials) - 1
  assert (trials[i].learning_rate, trials[i].momentum,
          trials[i].weight_decay) == (0.1, 0.9, 1e-3)
  runner.train(configs[i], str(tmp_path))
  ref = _metrics(tmp_path)
  assert [r["step"] for r in ref] == [r["step"] for r in vec[i]] == [4, 8]
  for got, want in zip(vec[i], ref):
    for key in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy"):
      np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5,
                                 err_msg=f"step {got['step']} {key}")


def test_sweep_lr_find_and_compile_take_a_registered_plugin(tmp_path, capsys):
  study_file = tmp_path / "plugin_study.py"
  study_file.write_text(REGISTERED + textwrap.dedent("""\
      import ml_collections
      from jaxtrain.config import base_config
      from jaxtrain.study.grid import study_defaults


      def get_config(arg=None):
        c = base_config()
        c.data.source = "arrays"
        c.model.name, c.model.features, c.model.hidden = "cnn", (8,), 16
        c.optimizer.name = "experiment_heavy_ball"
        c.optimizer.schedule.name = "constant"
        c.train.eval_batch_size = 360
        c.checkpoint.every = 0
        s = study_defaults()
        s.batch_sizes, s.optimizers = (64,), ("experiment_heavy_ball",)
        s.base_batch_size, s.lr_rule = 64, "linear"
        s.momentum = (0.8, 0.9)
        s.target, s.eval_every, s.max_steps = "eval/accuracy >= 0.99", 4, 8
        c.study = s
        return c
      """))
  code = cli.main(["sweep", f"--config={study_file}", f"--workdir={tmp_path / 's'}"])
  out = capsys.readouterr().out
  assert code == 0, out[-2000:]
  with open(tmp_path / "s" / "results.json") as f:
    records = json.load(f)["trials"]
  assert sorted(r["momentum"] for r in records) == [0.8, 0.9]
  assert {r["optimizer"] for r in records} == {"experiment_heavy_ball"}
  code = cli.main(["lr-find", f"--config={study_file}", f"--workdir={tmp_path / 'l'}",
                   "--num_steps=10", "--min_lr=1e-3", "--max_lr=1.0"])
  out = capsys.readouterr().out
  assert code == 0, out[-2000:]
  assert "LR range test (experiment_heavy_ball, batch 128)" in out
  experiment = _experiment(tmp_path, "experiment_heavy_ball", registered=True)
  code = cli.main(["compile", f"--config={experiment}", "--topology=cpu:8",
                   f"--json={tmp_path / 'c.json'}"])
  assert code == 0, capsys.readouterr().err[-2000:]
  report = json.loads((tmp_path / "c.json").read_text())
  assert report["flops"] > 0 and report["fits"]


def test_freeze_lr_multipliers_and_clipping_wrap_the_plugin():
  """Clip by global norm before the factory, x0.5 on `head/` after it, frozen
  `conv/` never moves: checked against the plain SGD arithmetic."""
  c = optim.default_config()
  c.name, c.learning_rate, c.schedule.name = PATH, 0.1, "constant"
  c.kwargs.momentum = 0.0
  c.grad_clip_norm = 1.0
  c.lr_multipliers = (("head/", 0.5),)
  c.freeze = ("conv/",)
  tx, _ = optim.build(c, 4)
  params = {"conv": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))},
            "dense": {"kernel": jnp.ones((2, 2))}}
  grads = {"conv": {"kernel": jnp.full((2, 2), 5.0)},
           "head": {"kernel": jnp.full((2, 2), 1.0)},
           "dense": {"kernel": jnp.full((2, 2), 1.0)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # The frozen gradient is zeroed before clipping: the norm is sqrt(8) (head, dense).
  g = 1.0 / np.sqrt(8.0)
  np.testing.assert_allclose(updates["conv"]["kernel"], 0.0)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * g, rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.05 * g, rtol=1e-6)


def test_a_study_label_sets_the_plugins_kwargs_and_they_are_checked():
  c = _study(PATH)
  c.study.momentum = ()
  c.study.optimizer_configs.hb.kwargs = ml_collections.ConfigDict({"momentum": 0.7})
  grid.validate_study(c.study)
  trials = grid.make_trials(c, 1437)
  assert {t.config.optimizer.kwargs.momentum for t in trials} == {0.7}
  c.study.optimizer_configs.hb.kwargs = ml_collections.ConfigDict({"beta": 0.7})
  with pytest.raises(ConfigError, match=r"optimizer\.kwargs\.beta=0\.7: not an "):
    grid.make_trials(c, 1437)
