"""Distillation: a teacher restored read-only from a run's checkpoint, in the step."""
import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxtrain import aot, runner
from jaxtrain.study import lr_find, vectorized
from jaxtrain.config import base_config
from jaxtrain.data import pipeline
from jaxtrain.errors import ConfigError
from jaxtrain import program

TEMPERATURE, BATCH = 3.0, 16


def _mlp(hidden):
  c = base_config()
  c.model.name = "mlp"
  c.model.hidden_sizes = hidden
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.1
  c.train.batch_size = BATCH
  c.train.log_every = 1
  return c


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A teacher MLP trained for 8 steps: (workdir, its final params)."""
  workdir = str(tmp_path_factory.mktemp("teacher"))
  c = _mlp((32,))
  c.train.num_steps = 8
  result = runner.train(c, workdir, devices=jax.devices()[:2])
  return workdir, jax.device_get(result.state.params)


def _student(teacher_workdir):
  c = _mlp((16,))
  c.train.num_steps = 1
  c.loss.name = "distillation"
  c.loss.temperature = TEMPERATURE
  c.loss.weight = 1.0  # only the soft term: the logged loss is the KL itself
  c.distill.teacher_workdir = teacher_workdir
  return c


def _mlp_logits(params, x):
  h = np.maximum(x @ params["hidden0"]["kernel"] + params["hidden0"]["bias"], 0)
  return h @ params["head"]["kernel"] + params["head"]["bias"]


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _files(directory):
  return sorted((os.path.relpath(os.path.join(r, f), directory),
                 os.stat(os.path.join(r, f)).st_mtime_ns)
                for r, _, fs in os.walk(directory) for f in fs)


def _first_batch_kl(exp, teacher_params):
  """Hinton et al. 2015 in numpy: T^2 KL(softmax(t/T) || softmax(s/T)) on the
  run's first batch, teacher = the teacher run's final params, student = its
  initial params."""
  config = exp.settings
  student, _ = program.initial_state(exp)
  batch = next(pipeline.train_iterator(exp.train_source, BATCH, config.seed))
  x = batch["image"].reshape(BATCH, -1).astype(np.float64)
  logp = _log_softmax(_mlp_logits(teacher_params, x) / TEMPERATURE)
  logq = _log_softmax(_mlp_logits(jax.device_get(student.params), x) / TEMPERATURE)
  return (TEMPERATURE**2 * np.sum(np.exp(logp) * (logp - logq), axis=-1)).mean()


def test_student_step_uses_the_restored_teachers_logits(teacher, tmp_path):
  teacher_dir, teacher_params = teacher
  before = _files(teacher_dir)
  config = _student(teacher_dir)
  exp = runner.build(config, jax.devices()[:4])
  assert exp.teacher.step == 8
  runner.train(config, str(tmp_path), devices=jax.devices()[:4])
  with open(tmp_path / "metrics.jsonl") as f:
    logged = json.loads(f.readline())["train/loss"]
  np.testing.assert_allclose(logged, _first_batch_kl(exp, teacher_params), rtol=1e-5)
  assert _files(teacher_dir) == before  # read-only: nothing written or touched


def test_teacher_model_that_differs_from_the_checkpoint_is_named(teacher):
  config = _student(teacher[0])
  config.distill.teacher_model.name = "mlp"
  config.distill.teacher_model.hidden_sizes = (64,)
  with pytest.raises(ConfigError, match=r"hidden0.*\(64,\)|\(32,\)") as e:
    runner.build(config, jax.devices()[:1])
  assert e.value.field == "distill.teacher_model"


def test_teacher_workdir_without_checkpoints_is_named(tmp_path):
  with pytest.raises(ConfigError) as e:
    runner.build(_student(str(tmp_path)), jax.devices()[:1])
  assert e.value.field == "distill.teacher_workdir"


def test_distillation_loss_without_a_teacher_is_a_config_error():
  with pytest.raises(ConfigError) as e:
    runner.build(_student(""), jax.devices()[:1])
  assert e.value.field == "distill.teacher_workdir"


def test_digits_distill_experiment_builds_with_a_teacher(teacher):
  from jaxtrain import config as config_lib
  config = config_lib.load("experiments/digits_distill.py")
  config.distill.teacher_workdir = teacher[0]
  exp = runner.build(config, jax.devices()[:1])
  assert exp.teacher is not None and config.loss.name == "distillation"
  alone = runner.build(config_lib.load("experiments/digits_distill.py:alone"),
                       jax.devices()[:1])
  assert alone.teacher is None and alone.model == exp.model


def test_compile_takes_the_teacher_as_an_argument_of_the_step(teacher):
  """`jaxtrain compile` of a distillation run: the teacher's variables are inputs
  of the compiled step, next to the student's params and momentum."""
  report, _ = aot.compile_train_step(_student(teacher[0]), aot.get_target("cpu:4"))
  student = 64 * 16 + 16 + 16 * 10 + 10
  teacher_params = 64 * 32 + 32 + 32 * 10 + 10
  batch = BATCH // 4 * (64 * 4 + 4 + 4)  # float32 image, int32 label and index
  expected = 4 * (2 * student + teacher_params) + batch
  assert expected <= report.memory["arguments"] <= expected + 1024


def test_lr_range_test_of_a_student_uses_the_teachers_logits(teacher):
  teacher_dir, teacher_params = teacher
  config = lr_find.range_config(_student(teacher_dir), 1e-3, 1.0, 3)
  result = lr_find.run_range_test(config, devices=jax.devices()[:4])
  exp = runner.build(config, jax.devices()[:4])
  np.testing.assert_allclose(result.losses[0], _first_batch_kl(exp, teacher_params),
                             rtol=1e-5)


def test_sweep_trial_of_a_student_uses_the_teachers_logits(teacher):
  """A study trial run alone (a group of one) takes the runner's step, teacher
  included: its first train loss is the numpy KL of the first batch."""
  teacher_dir, teacher_params = teacher
  group = vectorized.build_group([_student(teacher_dir)], jax.devices()[:4])
  it = pipeline.train_iterator(group.exp.train_source, BATCH, group.seeds[0])
  group.step([next(it)])
  it.close()
  np.testing.assert_allclose(group.train_metrics()[0]["train/loss"],
                             _first_batch_kl(group.exp, teacher_params), rtol=1e-5)


def test_pod_compile_moves_the_teachers_variables_to_the_physical_mesh(teacher):
  """`jaxtrain compile` reorders a TPU mesh's devices for the torus; the abstract
  teacher variables must follow, or the step's shardings would name two meshes."""
  exp = runner.build(_student(teacher[0]), jax.devices()[:4])
  reordered = Mesh(exp.mesh.devices[::-1], exp.mesh.axis_names,
                   axis_types=exp.mesh.axis_types)
  moved = aot._on_mesh(exp, reordered)  # pylint: disable=protected-access
  assert moved.mesh is reordered
  before = jax.tree.leaves(exp.teacher.variables)
  after = jax.tree.leaves(moved.teacher.variables)
  assert len(after) == len(before) > 0
  for a, b in zip(after, before):
    assert a.sharding.mesh is reordered and a.sharding.spec == b.sharding.spec
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
