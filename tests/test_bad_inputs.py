"""Bad input: exit 2, one line naming the field, the value and the fix, no traceback,
and nothing compiled.

Each case below used to end in a traceback (or, worse, to run): the issue's list and
the rest of each class found by probing (model options, schedules, seeds and step
counts, data sizes against the batch, experiment files, sharding rules, lr-find and
sweep flags). "Nothing compiled" is checked by JAX's own monitoring events: with the
in-memory caches cleared first, any jitted or eager computation lowers a program
(`/jax/core/compile/jaxpr_to_mlir_module_duration`, recorded also on a persistent
compilation-cache hit), while `jax.eval_shape` (used by the checks) does not.
"""
import os
import subprocess

import jax
import pytest

import processes

from jaxtrain import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "digits_cnn.py")
CIFAR = os.path.join(ROOT, "experiments", "cifar10_resnet.py")
STUDY = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")

_LOWERED = []
_ARMED = [False]


def _listen(event, duration, **kwargs):
  del duration, kwargs
  if _ARMED[0] and event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
    _LOWERED.append(event)


jax.monitoring.register_event_duration_secs_listener(_listen)

EXPERIMENT_FILES = {
    "partial.py": "import ml_collections\n\ndef get_config(arg=None):\n"
                  "  c = ml_collections.ConfigDict()\n"
                  "  c.model = ml_collections.ConfigDict({'name': 'mlp'})\n"
                  "  return c\n",
    "no_arg.py": "from jaxtrain.config import base_config\n\n"
                 "def get_config():\n  return base_config()\n",
    "syntax.py": "def get_config(arg=None)\n  return 1\n",
    "raises.py": "def get_config(arg=None):\n  raise RuntimeError('boom')\n",
    "imports.py": "import no_such_module_xyz\n\ndef get_config(arg=None):\n  pass\n",
    "none.py": "def get_config(arg=None):\n  return None\n",
    "dict.py": "from jaxtrain.config import base_config\n\n"
               "def get_config(arg=None):\n  return base_config().to_dict()\n",
    "no_get_config.py": "X = 1\n",
}

# (arguments after the subcommand's --config/--workdir, the field named).
TRAIN = [
    # The list.
    (["--config.model.features=32"], "config.model.features=32"),
    (["--config.sharding.rules=(('batch', 'nosuchaxis'),)"], "config.sharding.rules="),
    (["--config.sharding.rules=(('batch',),)"], "config.sharding.rules="),
    (["--config.optimizer.schedule.name=one_cycle",
      "--config.optimizer.schedule.warmup_steps=0",
      "--config.optimizer.schedule.div_factor=0.0"],
     "config.optimizer.schedule.div_factor=0.0"),
    (["--config.train.num_epochs=0", "--config.train.num_steps=10",
      "--config.train.batch_size=4096"], "config.train.batch_size=4096"),
    (["--config.train.num_epochs=0",
      "--config.train.num_steps=100000000000000000000000"],
     "config.train.num_steps="),
    (["--config.seed=100000000000000000000000"], "config.seed="),
    (["--config.seed=-1"], "config.seed=-1"),
    (["--config.optimizer.schedule.end_value=-0.1"],
     "config.optimizer.schedule.end_value=-0.1"),
    (["--config.data.train_transforms=decode|random_crop(8, padding=1)"],
     "config.data.train_transforms="),
    (["--config.model.features=(0,)"], "config.model.features=(0,)"),
    (["--config.model.hidden=-5"], "config.model.hidden=-5"),
    (["--config.optimizer.schedule.name=polynomial",
      "--config.optimizer.schedule.power=-1.0"],
       "config.optimizer.schedule.power=-1.0"),
    (["--config.train.eval_batch_size=100000"], "config.train.eval_batch_size=100000"),
    (["--config.data.source=synthetic",
      "--config.data.synthetic.image_shape=(100000, 100000, 3)"],
     "config.data.synthetic.image_shape="),
    # More of each class.
    (["--config.model.features=(16, -1)"], "config.model.features="),
    (["--config.model.dropout_rate='high'"], "config.model.dropout_rate="),
    (["--config.model.use_bn=1"], "config.model.use_bn=1"),
    (["--config.model.name=mlp", "--config.model.hidden_sizes=64"],
     "config.model.hidden_sizes=64"),
    (["--config.model.name=resnet18", "--config.model.width=0"],
     "config.model.width=0"),
    (["--config.model.name=vit", "--config.model.num_heads=3"], "config.model"),
    (["--config.model.name=cifar_resnet", "--config.model.depth=21"],
     "config.model.depth=21"),
    (["--config.sharding.rules=(('batch', ('data', 'data')),)"],
     "config.sharding.rules="),
    (["--config.sharding.rules=((3, 'data'),)"], "config.sharding.rules="),
    (["--config.optimizer.schedule.name=one_cycle",
      "--config.optimizer.schedule.warmup_steps=0",
      "--config.optimizer.schedule.final_div_factor=0.0"],
     "config.optimizer.schedule.final_div_factor=0.0"),
    (["--config.optimizer.schedule.name=warmup_polynomial",
      "--config.optimizer.schedule.power=0.0"], "config.optimizer.schedule.power=0.0"),
    (["--config.optimizer.schedule.name=exponential",
      "--config.optimizer.schedule.end_value=-1.0"],
       "config.optimizer.schedule.end_value="),
    (["--config.optimizer.schedule.name=linear_cosine",
      "--config.optimizer.schedule.beta=-0.5"], "config.optimizer.schedule.beta=-0.5"),
    (["--config.optimizer.schedule.name=noisy_linear_cosine",
      "--config.optimizer.schedule.initial_variance=-1.0"],
     "config.optimizer.schedule.initial_variance=-1.0"),
    (["--config.optimizer.schedule.name=noisy_linear_cosine",
      "--config.optimizer.schedule.seed=-3"], "config.optimizer.schedule.seed=-3"),
    (["--config.optimizer.schedule.name=piecewise",
      "--config.optimizer.schedule.boundaries=(100,)",
      "--config.optimizer.schedule.scales=(-1.0,)"],
       "config.optimizer.schedule.scales="),
    (["--config.optimizer.schedule.warmup_steps=1000000000000"],
     "config.optimizer.schedule.warmup_steps="),
    (["--config.optimizer.grad_noise_eta=0.1", "--config.optimizer.grad_noise_seed=-1"],
     "config.optimizer.grad_noise_seed=-1"),
    (["--config.optimizer.name=addsign", "--config.optimizer.sign_decay=cosine",
      "--config.optimizer.sign_decay_num_periods=0.0"],
     "config.optimizer.sign_decay_num_periods=0.0"),
    (["--config.train.num_epochs=1e12"], "config.train.num_epochs="),
    (["--config.train.log_every=1000000000000"], "config.train.log_every="),
    (["--config.train.profile_steps=(5000, 5010)"], "config.train.profile_steps="),
    (["--config.train.stages=((0, 0, 64), (5000, 0, 32))"], "config.train.stages="),
    (["--config.train.stages=((0, 0, 4096),)"], "config.train.stages="),
    (["--config.data.source=arrays", "--config.data.train_transforms=decode"],
     "config.data.train_transforms="),
    (["--config.data.source=synthetic", "--config.data.synthetic.num_examples=8"],
     "config.train.batch_size=64"),
    (["--config.train.batch_size=1024", "--config.data.source=synthetic",
      "--config.data.synthetic.image_shape=(2048, 2048, 3)",
      "--config.data.synthetic.num_examples=2048", "--config.data.train_transforms="],
     "config.train.batch_size=1024"),
    (["--config.loss.name=distillation"], "config.distill.teacher_workdir="),
    (["--config.loss.name=focal", "--config.loss.gamma=-1.0"],
     "config.loss.gamma=-1.0"),
    (["--config.loss.name=huber", "--config.loss.delta=0.0"], "config.loss.delta=0.0"),
    (["--config.data.train_transforms=random_crop(0)"],
     "config.data.train_transforms="),
    (["--config.data.eval_transforms=resize(-2)"], "config.data.eval_transforms="),
    (["--config.data.prefetch=1000000"], "config.data.prefetch=1000000"),
    (["--config.data.num_workers=100000"], "config.data.num_workers=100000"),
    (["--config.data.train_split=train[:5]"], "config.train.batch_size=64"),
    (["--config.model.use_bn=True", "--config.model.bn_momentum=1.5"],
     "config.model.bn_momentum=1.5"),
    (["--config.model.name=vit", "--config.model.patch_size=3"], "config.model="),
    # init_from: the source, checked before compiling (tests/test_init_from.py: the
    # cases that need a source run).
    (["--config.init_from.workdir=/nonexistent/run"],
     "config.init_from.workdir='/nonexistent/run': no checkpoints"),
    (["--config.init_from.file=/nonexistent/w.npz",
      "--config.init_from.name_map=torchvision_resnet"],
     "config.init_from.file='/nonexistent/w.npz': no such file"),
    (["--config.init_from.file=w.npz", "--config.init_from.name_map=resnet"],
     "config.init_from.name_map='resnet'"),
    (["--config.init_from.file=w.pth", "--config.init_from.name_map=timm_resnet"],
     "config.init_from.file='w.pth'"),
    (["--config.init_from.workdir=/tmp", "--config.init_from.reinit=head("],
     "config.init_from.reinit='head('"),
    (["--config.init_from.workdir=/tmp", "--config.init_from.file=w.npz",
      "--config.init_from.name_map=timm_vit"], "config.init_from.file='w.npz'"),
    (["--config.init_from.step=100"], "config.init_from.step=100"),
    (["--config.init_from.name_map=timm_vit"], "config.init_from.name_map="),
    (["--config.init_from.reinit=^params/head/"], "config.init_from.reinit="),
    (["--config.init_from.workdir=/tmp", "--config.init_from.step=-1"],
     "config.init_from.step=-1"),
]

# Plug-in optimizers (`optimizer.name = "test_bad_inputs:FACTORY"`; pytest puts this
# directory on sys.path): each mistake names optimizer.name or optimizer.kwargs.X.
NOT_A_FACTORY = 3


def sgd_factory(learning_rate, momentum=0.0):
  import optax  # pylint: disable=g-import-not-at-top
  return optax.sgd(learning_rate, momentum)


def raising_factory(learning_rate):
  raise ValueError("this factory always fails")


def returns_a_tuple(learning_rate):
  return (learning_rate, None)


def needs_beta(learning_rate, beta):
  return sgd_factory(learning_rate, beta)


def no_learning_rate(momentum=0.9):
  return sgd_factory(0.1, momentum)


def sign_descent(learning_rate):
  import optax  # pylint: disable=g-import-not-at-top
  return optax.sign_sgd(learning_rate)


def python_if_momentum(learning_rate, momentum=0.9):
  """Decides on momentum in Python: it cannot be a traced (vectorized) value."""
  return sgd_factory(learning_rate, momentum if momentum > 0 else None)


PLUGIN = [
    ("no_such_module_xyz:factory", [], "config.optimizer.name='no_such_module_xyz"),
    ("test_bad_inputs:no_such_factory", [], "has no attribute 'no_such_factory'"),
    ("test_bad_inputs:NOT_A_FACTORY", [], "is a int value, not callable"),
    ("test_bad_inputs:raising_factory", [], "raised ValueError"),
    ("test_bad_inputs:returns_a_tuple", [], "not an optax.GradientTransformation"),
    ("test_bad_inputs:sgd_factory", ["--config.optimizer.kwargs.nesterov=True"],
     "config.optimizer.kwargs.nesterov=True: not an argument"),
    ("test_bad_inputs:needs_beta", [], "config.optimizer.kwargs.beta=None: required"),
    ("test_bad_inputs:no_learning_rate", [], "takes no learning_rate"),
    ("test_bad_inputs:sgd_factory", ["--config.optimizer.kwargs.learning_rate=0.5"],
     "config.optimizer.kwargs.learning_rate=0.5"),
    ("test_bad_inputs:", [], "a plug-in path is 'package.module:factory'"),
    ("no_such_optimizer", [], "config.optimizer.name='no_such_optimizer': unknown"),
    ("test_bad_inputs:sgd_factory", ["--config.optimizer.nesterov=True"],
     "config.optimizer.nesterov=True: not used"),
    ("momentum", ["--config.optimizer.kwargs.momentum=0.5"],
     "config.optimizer.kwargs={'momentum': 0.5}: not used"),
]
EXPERIMENT_FILES.update({
    "registers_adam.py": "import jaxtrain\n\n@jaxtrain.optim.register('adam')\n"
                         "def adam(learning_rate):\n  pass\n",
    "registers_path.py": "import jaxtrain\n\n@jaxtrain.optim.register('a.b:c')\n"
                         "def c(learning_rate):\n  pass\n",
})
FILES = [(name, "--config=") for name in EXPERIMENT_FILES
         if name not in ("partial.py", "no_arg.py", "registers_adam.py",
                         "registers_path.py")] + [
    ("registers_adam.py", "config.optimizer.name='adam': register(...) refused"),
    ("registers_path.py", "config.optimizer.name='a.b:c': register(...) refused"),
    ("partial.py", "base_config()"), ("no_arg.py:variant", "takes no argument"),
    (f"{CIFAR}:nonsense", "nonsense")]
LR_FIND = [
    (["--smoothing=1.0"], "--smoothing=1.0"),
    (["--smoothing=-0.5"], "--smoothing=-0.5"),
    (["--max_lr=nan"], "--max_lr=nan"),
    (["--max_lr=inf"], "--max_lr=inf"),
    (["--min_lr=0"], "--min_lr=0.0"),
    (["--divergence_factor=0.5"], "--divergence_factor=0.5"),
    (["--num_steps=1"], "--num_steps=1"),
]
SWEEP = [
    (["--config.study.optimizers=('test_bad_inputs:sign_descent',)",
      "--config.study.momentum=(0.5,)"], "config.study.momentum=0.5"),
    (["--config.study.optimizers=('test_bad_inputs:python_if_momentum',)",
      "--config.study.momentum=(0.5, 0.9)"], "config.study.momentum=(0.5, 0.9)"),
    (["--config.study.target=eval/top1 >= 0.5"], "config.study.target="),
    (["--config.study.batch_sizes=(64, 4096)"], "config.study.batch_sizes="),
    (["--config.study.seeds=(0, 100000000000000000000)"], "config.study.seeds="),
    (["--config.study.max_steps=1000000000000"], "config.study.max_steps="),
    (["--config.study.target=eval/accuracy >= 1.5"], "config.study.target="),
    (["--config.init_from.workdir=/tmp"], "config.init_from.workdir='/tmp': a sweep"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("experiments")
  for name, text in EXPERIMENT_FILES.items():
    (root / name).write_text(text)
  return root


def _refused(argv, capsys, field):
  """Runs jaxtrain in-process; asserts the refusal and that nothing compiled."""
  jax.clear_caches()
  _LOWERED.clear()
  _ARMED[0] = True
  try:
    code = cli.main(argv)
  finally:
    _ARMED[0] = False
  captured = capsys.readouterr()
  err = captured.err
  assert code == 2, (code, captured.out[-2000:], err[-2000:])
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxtrain: error: "), err
  assert field in lines[0], lines[0]
  assert "Traceback" not in err
  assert not _LOWERED, f"{len(_LOWERED)} programs lowered before the refusal"
  return lines[0]


@pytest.mark.parametrize("overrides,field", TRAIN,
                         ids=[f"{i}-{c[1][:40]}" for i, c in enumerate(TRAIN)])
def test_bad_config_is_refused_before_compiling(overrides, field, tmp_path, capsys):
  _refused(["train", f"--config={DIGITS}", f"--workdir={tmp_path}", *overrides],
           capsys, field)
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("name,overrides,field", PLUGIN,
                         ids=[f"{i}-{c[0][-24:]}" for i, c in enumerate(PLUGIN)])
def test_bad_plugin_optimizer_is_refused_before_compiling(name, overrides, field,
                                                          tmp_path, capsys):
  _refused(["train", f"--config={DIGITS}", f"--workdir={tmp_path}",
            f"--config.optimizer.name={name}", *overrides], capsys, field)


@pytest.mark.parametrize("name,field", FILES, ids=[f[0][-24:] for f in FILES])
def test_bad_experiment_file_is_refused(name, field, files, tmp_path, capsys):
  spec = name if os.path.isabs(name.split(":")[0]) else str(files / name)
  _refused(["train", f"--config={spec}", f"--workdir={tmp_path}"], capsys, field)


@pytest.mark.parametrize("flags,field", LR_FIND, ids=[c[1] for c in LR_FIND])
def test_bad_lr_find_flag_is_refused(flags, field, tmp_path, capsys):
  _refused(["lr-find", f"--config={DIGITS}", f"--workdir={tmp_path}", *flags],
           capsys, field)


@pytest.mark.parametrize("overrides,field", SWEEP, ids=[c[1] for c in SWEEP])
def test_bad_sweep_is_refused(overrides, field, tmp_path, capsys):
  _refused(["sweep", f"--config={STUDY}", f"--workdir={tmp_path}",
            "--config.study.batch_sizes=(64,)", "--config.study.optimizers=('sgd',)",
            *overrides], capsys, field)
  assert not os.path.exists(tmp_path / "results.json")


def test_messages_say_what_to_do(tmp_path, capsys, files):
  line = _refused(["train", f"--config={DIGITS}", f"--workdir={tmp_path}",
                   "--config.model.features=32"], capsys, "features")
  assert "(32, 64)" in line  # the form expected, by example
  line = _refused(["train", f"--config={files / 'syntax.py'}",
                   f"--workdir={tmp_path}"], capsys, "SyntaxError")
  assert "syntax.py line 1" in line
  line = _refused(["train", f"--config={DIGITS}", f"--workdir={tmp_path}",
                   "--config.train.eval_batch_size=100000"], capsys, "360")


# `compile --memory_gib=0.001` printing its sizes with enough digits: tests/test_aot.py.


def test_compile_json_that_cannot_be_written_is_refused_before_compiling(capsys):
  _refused(["compile", f"--config={DIGITS}", "--topology=cpu:8",
            "--json=/nonexistent_dir/report.json"], capsys, "--json=")


def test_report_of_a_damaged_results_file_is_refused(tmp_path, capsys):
  (tmp_path / "results.json").write_text("{not json")
  _refused(["report", str(tmp_path)], capsys, "is not a sweep's results file")


def test_console_script_refuses_in_one_line(files, tmp_path):
  """A few cases through the real console entry point, in a fresh process."""
  for argv in (["--config.model.features=32"],
               ["--config.sharding.rules=(('batch', 'nosuchaxis'),)"]):
    proc = subprocess.run(
        [*processes.jaxtrain_cmd(), "train", f"--config={DIGITS}",
         f"--workdir={tmp_path}", *argv], capture_output=True, text=True,
        timeout=120, env=processes.cpu_env(8))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("jaxtrain: error: config.")
