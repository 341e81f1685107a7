"""Distillation teacher: another run's checkpoint, restored read-only.

Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv 1503.02531) trains a
student on a teacher's temperature-softened outputs. `config.distill.teacher_workdir`
names a finished run's workdir; its newest checkpoint (or `distill.teacher_step`) in
`<workdir>/checkpoints` is opened read-only (`checkpoint.ReadOnlyCheckpoints`), and
only the teacher's params and model state are read (a partial restore: no optimizer
state), each leaf sharded by the teacher model's logical axes on the student's mesh.

The teacher's model is `distill.teacher_model` (name + options), or, when its name is
"", the model section saved in that checkpoint's config. Everything is checked by
`build` before anything compiles: the checkpoint exists, and the model's parameter
tree and shapes are the checkpoint's (a different model or class count is named).

The teacher runs inside the student's jitted step (`runner`), as
`teacher_fn(images) -> logits` with `train=False` and its gradient stopped, and the
loss reads its logits as `batch["teacher_logits"]` (`jaxtrain.losses`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from jaxtrain import checkpoint, models
from jaxtrain.errors import ConfigError
from jaxtrain.parallel import sharding
from jaxtrain.settings import Settings


@dataclasses.dataclass
class Teacher:
  """A teacher model and its variables ({"params": ..., **model_state}).

  `variables` are `jax.ShapeDtypeStruct`s (with shardings) after `build`, arrays
  after `restore`.
  """
  model: nn.Module
  variables: Any
  step: int
  directory: str

  @property
  def shardings(self) -> Any:
    return jax.tree.map(lambda x: x.sharding, self.variables)

  def logits_fn(self, variables: Any):
    """`images -> float32 logits` of the teacher with `variables` (eval mode)."""
    def fn(images: jax.Array) -> jax.Array:
      return self.model.apply(variables, images, train=False).astype(jnp.float32)
    return fn


def _model_section(distill: ml_collections.ConfigDict,
                   saved: checkpoint.ReadOnlyCheckpoints, step: int) -> dict[str, Any]:
  if distill.teacher_model.name:
    return dict(distill.teacher_model)
  return dict(saved.config(step)["model"])


def build(config: Settings, num_classes: int, dtype: Any,
          input_shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> Teacher | None:
  """The configured teacher, checked against its checkpoint; None without one."""
  distill = config.distill
  distilling = getattr(config, "loss", {}).get("name") == "distillation"
  if distilling != bool(distill.teacher_workdir):
    raise ConfigError("distill.teacher_workdir", distill.teacher_workdir,
                      "loss.name=distillation needs a teacher's workdir here"
                      if distilling else "a teacher is only used with "
                      "loss.name=distillation; set it, or leave this ''")
  if not distill.teacher_workdir:
    return None
  directory = checkpoint.checkpoints_of(distill.teacher_workdir,
                                        "distill.teacher_workdir", "teacher")
  with checkpoint.ReadOnlyCheckpoints(directory) as checkpoints:
    step = checkpoint.choose_step(checkpoints.steps(), distill.teacher_step,
                                  ("distill.teacher_workdir", "distill.teacher_step"),
                                  distill.teacher_workdir, "teacher")
    section = _model_section(distill, checkpoints, step)
    saved = checkpoints.state_metadata(step)["train"]
  name = section.pop("name")
  try:
    model = models.get_model(name, num_classes=num_classes, dtype=dtype, **section)
  except (TypeError, ValueError) as e:
    raise ConfigError("distill.teacher_model", name, f"cannot build it: {e}") from None
  variables = _abstract_variables(model, input_shape, mesh, config.sharding.rules)
  _check_matches(variables, saved, step, directory)
  return Teacher(model, variables, step, str(directory))


def _abstract_variables(model: nn.Module, input_shape: tuple[int, ...],
                        mesh: jax.sharding.Mesh, rules: Any) -> Any:
  boxed = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))
  shardings = sharding.to_shardings(sharding.logical_specs(boxed), mesh, rules)
  return sharding.abstract(nn.meta.unbox(boxed), shardings)


def _saved_part(variables: Any, saved: Any) -> dict[str, Any]:
  """The checkpoint's {"params", **model_state} in the layout of `variables`."""
  model_state = saved.get("model_state") or {}
  return {"params": saved["params"], **{k: model_state.get(k) for k in variables
                                        if k != "params"}}


def _check_matches(variables: Any, saved: Any, step: int, directory: Any) -> None:
  diffs = checkpoint.shape_differences(variables, _saved_part(variables, saved))
  if diffs:
    raise ConfigError("distill.teacher_model", None, f"does not match the checkpoint "
                      f"at step {step} in {directory}: {'; '.join(diffs[:4])}")


def restore(teacher: Teacher) -> Teacher:
  """`teacher` with its variables read from the checkpoint, in their shardings."""
  target = {"params": teacher.variables["params"],
            "model_state": {k: v for k, v in teacher.variables.items()
                            if k != "params"}}
  try:
    with checkpoint.ReadOnlyCheckpoints(teacher.directory) as checkpoints:
      restored = checkpoints.restore_part(teacher.step, {"train": target})["train"]
  except checkpoint.CheckpointCorruptError as e:  # only the teacher's arrays: checked
    raise ConfigError("distill.teacher_workdir",
                      str(epath.Path(teacher.directory).parent), "its checkpoint at "
                      f"step {teacher.step} in {teacher.directory} is damaged ({e}); "
                      "choose another with distill.teacher_step") from None
  variables = {"params": restored["params"], **(restored.get("model_state") or {})}
  return dataclasses.replace(teacher, variables=variables)
