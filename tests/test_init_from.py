"""`init_from`: a fresh run starts from another run's weights or a weights file.

References are computed independently: the source run's own final state (in
memory, not read back through init_from), torchvision's documented names mapped
by a table written here, and numpy transposes for PyTorch's layouts.
"""
import dataclasses
import json
import os
import re
import shutil

import flax
import jax
import numpy as np
import pytest

import processes

from jaxtrain import checkpoint, cli, config as config_lib, init_from, runner
from jaxtrain.parallel import rules as rules_lib
from jaxtrain.program import compile_program
from jaxtrain.study import lr_find
from test_bad_inputs import _refused  # pylint: disable=g-import-not-at-top
from pretrained.test_name_maps import torchvision_state_dict  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "digits_cnn.py")
TARGET = 0.985


def _digits(*overrides):
  config = config_lib.load(DIGITS)
  config_lib.apply_overrides(config, ["train.num_epochs=0",
                                      "optimizer.schedule.warmup_steps=5", *overrides])
  return config_lib.validate(config)


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A finished 30-step digits run with batch norm and an EMA, on data=8."""
  workdir = str(tmp_path_factory.mktemp("source"))
  config = _digits("train.num_steps=30", "model.use_bn=True", "train.ema_decay=0.9")
  result = runner.train(config, workdir)
  return workdir, jax.device_get(result.state)


def _loaded_state(workdir, *overrides):
  """The state a run with `overrides` starts from (`prepare` + `load`), its report
  and its program."""
  exp = runner.build(_digits(f"init_from.workdir={workdir}", *overrides))
  program = compile_program(exp)
  found = init_from.prepare(exp)
  return init_from.load(found, program, exp), found.report, program


def test_restore_on_another_mesh_gives_the_source_params_exactly(source):
  workdir, saved = source
  state, report, program = _loaded_state(
      workdir, "model.use_bn=True", "mesh.data=1", "mesh.fsdp=4", "mesh.model=2",
      f"sharding.rules={rules_lib.RULES_FSDP_TP!r}")
  assert not (report.missing or report.mismatched or report.unexpected)
  specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
  assert any(any(axis is not None for axis in s) for s in specs)  # really split
  got = _flat({"params": state.params, **state.model_state})
  want = _flat({"params": saved.params, **saved.model_state})
  assert sorted(got) == sorted(want) and any(p.startswith("batch_stats/") for p in got)
  for path, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg=path)
    assert got[path].sharding == _flat({"params": program.shardings.params,
                                        **program.shardings.model_state})[path]
  # A new training: step 0, the momentum trace zero, and no EMA in this run.
  assert int(state.step) == 0 and state.ema is None
  for trace in jax.tree.leaves(state.opt_state):
    np.testing.assert_array_equal(np.asarray(trace), 0)


@pytest.mark.slow
def test_two_processes_on_another_mesh_start_from_the_source_params(source, tmp_path):
  """2 processes x 4 devices (fsdp=4, model=2) from a 1 x 8 (data=8) run: every
  process restores its own shards. The params are frozen, so the run's checkpoint
  holds exactly what it started from."""
  workdir, saved = source
  run = str(tmp_path / "run")
  port = processes.free_port()
  flags = ["--config.train.num_epochs=0", "--config.train.num_steps=2",
           "--config.optimizer.schedule.warmup_steps=1", "--config.model.use_bn=True",
           "--config.optimizer.freeze=('.*',)", f"--config.init_from.workdir={workdir}",
           "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.model=2",
           f"--config.sharding.rules={rules_lib.RULES_FSDP_TP!r}"]
  outs = processes.run_together(
      [processes.jaxtrain_cmd("train", f"--config={DIGITS}", f"--workdir={run}",
                              *flags, *processes.multihost_flags(port, 2, i))
       for i in range(2)], processes.cpu_env(4), timeout=600)
  assert "init_from: starting from the weights at step 30" in outs[0]
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=one_device),
                        saved.params)
  with checkpoint.ReadOnlyCheckpoints(os.path.join(run, "checkpoints")) as ckpts:
    restored = ckpts.restore_part(2, {"train": {"params": target}})["train"]
  for path, value in _flat(saved.params).items():
    np.testing.assert_array_equal(_flat(restored["params"])[path], value,
                                  err_msg=path)


def test_ema_weights_and_fresh_batch_statistics_on_request(source):
  workdir, saved = source
  state, report, _ = _loaded_state(workdir, "model.use_bn=True", "init_from.ema=True",
                                   "init_from.model_state=False",
                                   "train.ema_decay=0.5")
  got = _flat(jax.device_get({"params": state.params, **state.model_state}))
  for path, value in _flat(saved.ema["params"]).items():
    np.testing.assert_array_equal(got[f"params/{path}"], value)
  assert report.reinitialized and all(
      p.startswith("batch_stats/") for p in report.reinitialized)
  for path in report.reinitialized:  # a fresh BN: mean 0, variance 1
    np.testing.assert_array_equal(got[path], 0.0 if path.endswith("mean") else 1.0)
  # This run's own EMA starts at the loaded weights.
  ema = _flat(jax.device_get(state.ema["params"]))
  for path, value in ema.items():
    np.testing.assert_array_equal(value, got[f"params/{path}"])


# torchvision resnet.py's documented names -> jaxtrain's ResNet, written out here
# (not taken from name_maps): (source regex, target, layout).
_TV_TABLE = [
    (r"conv1\.weight", "params/stem_conv/kernel", "oihw"),
    (r"bn1\.(weight|bias|running_mean|running_var)", "{c}/stem_bn/{leaf}", "copy"),
    (r"layer(\d)\.(\d)\.conv(\d)\.weight", "params/stage{0}_block{1}/conv{2}/kernel",
     "oihw"),
    (r"layer(\d)\.(\d)\.bn(\d)\.(weight|bias|running_mean|running_var)",
     "{c}/stage{0}_block{1}/bn{2}/{leaf}", "copy"),
    (r"layer(\d)\.(\d)\.downsample\.0\.weight",
     "params/stage{0}_block{1}/proj_conv/kernel", "oihw"),
    (r"layer(\d)\.(\d)\.downsample\.1\.(weight|bias|running_mean|running_var)",
     "{c}/stage{0}_block{1}/proj_bn/{leaf}", "copy"),
]
_BN_LEAF = {"weight": ("params", "scale"), "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"),
            "running_var": ("batch_stats", "var")}


def _expected(name, array):
  """Where torchvision's `name` goes in jaxtrain's ResNet, in its layout."""
  for pattern, target, layout in _TV_TABLE:
    m = re.fullmatch(pattern, name)
    if m:
      groups = list(m.groups())
      c, leaf = "params", ""
      if groups and groups[-1] in _BN_LEAF:
        c, leaf = _BN_LEAF[groups.pop()]
      value = array.transpose(2, 3, 1, 0) if layout == "oihw" else array
      return target.format(*groups, c=c, leaf=leaf), value
  return None


def _readme_block(heading):
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read().split(heading, 1)[1]
  return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _flags(block):
  return dict(re.findall(r"--(config\.[\w.]+)=('[^']*'|\S+)", block))


def _resnet_file_config(path, *overrides):
  """The README's published-weights flags on a ResNet-18 with 32x32 synthetic data
  (10 classes), the file at `path`."""
  flags = {k: v.strip("'") for k, v in _flags(_readme_block("## Fine-tuning")[1])
           .items() if k.startswith("config.init_from.")}
  assert flags == {"config.init_from.file": "/weights/resnet50.safetensors",
                   "config.init_from.name_map": "torchvision_resnet",
                   "config.init_from.reinit": "^params/head/"}
  flags["config.init_from.file"] = str(path)
  flags.update(dict(o.split("=", 1) for o in overrides))
  config = config_lib.load(DIGITS)
  config_lib.apply_overrides(config, [
      "model.name=resnet18", "data.source=synthetic",
      "data.synthetic.image_shape=(32, 32, 3)", "data.synthetic.num_classes=10",
      "data.train_transforms=",
      "data.eval_transforms=", "train.num_epochs=0",
      *[f"{k[len('config.'):]}={v}" for k, v in flags.items()]])
  return config_lib.validate(config)


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
  """A ResNet-18 run configured by the README's flags (built and its fresh state
  made once: the init compiles for ~25 s here)."""
  path = tmp_path_factory.mktemp("weights") / "resnet18.npz"
  exp = runner.build(_resnet_file_config(path))
  return exp, compile_program(exp)


def _start(resnet18, sd, path, **init_from_fields):
  """Writes `sd` to `path` and starts the ResNet-18 run from it: (state, log)."""
  np.savez(path, **sd)
  exp, program = resnet18
  settings = exp.settings.with_section("init_from", file=str(path), **init_from_fields)
  lines = []
  state = init_from.start(dataclasses.replace(exp, settings=settings), program,
                          program.state, None, lines.append)
  fresh = _flat(jax.device_get({"params": program.state.params,
                                **program.state.model_state}))
  return _flat(jax.device_get({"params": state.params, **state.model_state})), fresh, (
      lines)


def test_a_torchvision_resnet18_file_lands_where_the_map_says(resnet18, tmp_path):
  sd = torchvision_state_dict(18, num_classes=1000)
  got, fresh, lines = _start(resnet18, sd, tmp_path / "resnet18.npz")
  placed = set()
  for name, array in sd.items():
    hit = _expected(name, array)
    if hit is None:  # fc (the new head) and num_batches_tracked
      assert name.startswith("fc.") or name.endswith("num_batches_tracked"), name
      continue
    path, value = hit
    np.testing.assert_array_equal(got[path], value, err_msg=name)
    placed.add(path)
  assert placed == set(got) - {"params/head/kernel", "params/head/bias"}
  for path in ("params/head/kernel", "params/head/bias"):  # re-initialized
    np.testing.assert_array_equal(got[path], fresh[path])
  assert lines[1] == (f"init_from: {len(placed)} variables loaded, 2 re-initialized, "
                      "0 missing, 0 of another shape, 0 unexpected, 20 dropped")


def test_mismatches_are_reported_and_leave_the_fresh_values(resnet18, tmp_path):
  sd = torchvision_state_dict(18, num_classes=1000)
  sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"][:32]  # a wrong shape
  sd["extra.weight"] = np.zeros(3, np.float32)
  got, fresh, lines = _start(resnet18, sd, tmp_path / "resnet18.npz", reinit="")
  assert "0 missing, 3 of another shape, 1 unexpected" in lines[1]
  assert "  shape mismatch: fc.weight (1000, 512) -> params/head/kernel (512, 10)" in (
      lines)
  assert ("  shape mismatch: layer1.0.conv1.weight (32, 64, 3, 3) -> "
          "params/stage1_block0/conv1/kernel (3, 3, 64, 64)") in lines
  assert "  unexpected: extra.weight" in lines
  for path in ("params/stage1_block0/conv1/kernel", "params/head/kernel"):
    np.testing.assert_array_equal(got[path], fresh[path])


def _evals(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]


def _steps_to_target(evals):
  return next((step for step, accuracy in evals if accuracy >= TARGET), None)


@pytest.mark.slow
def test_fine_tuning_a_new_head_reaches_the_target_sooner_than_from_scratch(
    tmp_path):
  """The README's two commands: a digits run, then a new head on its weights."""
  commands = _readme_block("## Fine-tuning")[0]
  scratch_flags, tune_flags = (
      _flags(c) for c in re.split(r"\n(?=\.venv/bin/jaxtrain)", commands.strip()))
  assert tune_flags == {"config.init_from.workdir": "/tmp/digits_cnn",
                        "config.init_from.reinit": "'^params/head/'"}
  assert not scratch_flags
  evals = "--config.train.eval_every=25"
  scratch, tuned = str(tmp_path / "scratch"), str(tmp_path / "tuned")
  assert cli.main(["train", f"--config={DIGITS}", f"--workdir={scratch}", evals]) == 0
  assert cli.main(["train", f"--config={DIGITS}", f"--workdir={tuned}", evals,
                   f"--config.init_from.workdir={scratch}",
                   "--config.init_from.reinit=^params/head/",
                   "--config.train.num_epochs=0",
                   "--config.train.num_steps=200"]) == 0
  from_scratch, fine_tuned = (_steps_to_target(_evals(w)) for w in (scratch, tuned))
  assert from_scratch is not None and fine_tuned is not None
  assert fine_tuned < from_scratch, (_evals(scratch), _evals(tuned))
  assert _evals(tuned)[-1][1] >= TARGET


def test_a_resumed_run_continues_its_own_weights_without_the_source(source,
                                                                   tmp_path, capsys):
  workdir, _ = source
  copy = str(tmp_path / "source_copy")
  shutil.copytree(workdir, copy)
  run = str(tmp_path / "run")
  config = _digits("train.num_steps=20", "model.use_bn=True",
                   f"init_from.workdir={copy}")
  runner.train(config, run, stop_at=10)
  assert "init_from: starting from the weights at step 30" in capsys.readouterr().out
  shutil.rmtree(copy)  # a resume never reads the source
  assert int(runner.train(config, run).state.step) == 20
  out = capsys.readouterr().out
  assert ("init_from is not read: the run resumed its own checkpoint at step 10"
          in out), out


def test_lr_find_starts_from_the_source_weights(source, capsys):
  workdir, _ = source
  losses = {}
  for name, extra in (("scratch", ()), ("tuned", (f"init_from.workdir={workdir}",))):
    config = lr_find.range_config(_digits("model.use_bn=True", *extra), 1e-4, 1e-3, 3)
    losses[name] = lr_find.run_range_test(config).losses[0]
  assert "init_from: starting from the weights at step 30" in capsys.readouterr().out
  # The first loss is the loss of the starting weights (in train mode: dropout,
  # batch statistics): about ln(10) = 2.3 fresh, far lower after 30 trained steps
  # (2.65 and 1.41 here).
  assert losses["scratch"] > 2.0 and losses["tuned"] < 0.6 * losses["scratch"], losses


# Refusals that need a source run: exit 2, one line naming the field, nothing
# compiled (`test_bad_inputs._refused`). Static ones are in test_bad_inputs.py.
@pytest.mark.parametrize("overrides,field", [
    (["--config.init_from.step=7"], "config.init_from.step=7"),
    (["--config.model.features=(16, 64)", "--config.init_from.strict=True"],
     "config.init_from.strict=True: "),
])
def test_a_bad_source_is_refused_before_compiling(source, overrides, field, tmp_path,
                                                   capsys):
  workdir, _ = source
  args = ["train", f"--config={DIGITS}", f"--workdir={tmp_path}",
          f"--config.init_from.workdir={workdir}", "--config.model.use_bn=True",
          *overrides]
  _refused(args, capsys, field)


def test_a_source_without_an_ema_is_refused_for_init_from_ema(tmp_path, capsys):
  plain = str(tmp_path / "plain")
  runner.train(_digits("train.num_steps=5"), plain)
  _refused(["train", f"--config={DIGITS}", f"--workdir={tmp_path / 'run'}",
            f"--config.init_from.workdir={plain}", "--config.init_from.ema=True"],
           capsys, "config.init_from.ema=True: the checkpoint at step 5")
