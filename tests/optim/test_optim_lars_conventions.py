"""jaxtrain.optim.lars follows optax's conventions (optax's own behaviour as the
reference: extra update arguments, mask forms, keyword hazards, library errors)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain import optim
from test_optim_lars import W0, gradient_sequence, run  # pylint: disable=g-import-not-at-top


def test_update_takes_extra_keyword_arguments_like_every_optax_transform():
  for tx in (optim.lars(0.1), optax.lars(0.1)):
    state = tx.init(W0)
    updates, _ = tx.update(W0, state, W0, loss=1.0, value=jnp.ones(()))
    assert jax.tree.structure(updates) == jax.tree.structure(W0)


def test_exclude_true_for_every_tensor_is_optax_momentum_sgd():
  # Excluded tensors: no decay, trust ratio 1, LR inside the trace (constant LR:
  # the same as optax's trace-then-scale).
  grads = gradient_sequence()
  assert_allclose = np.testing.assert_allclose
  ours = run(optim.lars(0.1, momentum=0.9, weight_decay=0.5, exclude=True), grads)
  theirs = run(optax.sgd(0.1, momentum=0.9), grads)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    assert_allclose(a, b, rtol=1e-5)  # lr inside vs outside the trace: rounding


def test_exclude_false_and_a_prefix_tree_as_optax_masks_take_them():
  grads = gradient_sequence()
  every = run(optim.lars(0.3, weight_decay=0.0, trust_coefficient=0.01,
                         exclude=False), grads)
  theirs = run(optax.lars(0.3, weight_decay=0.0, trust_coefficient=0.01,
                          momentum=0.9), grads)
  for a, b in zip(jax.tree.leaves(every), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5)
  prefix = {k: k == "bias" for k in W0}  # a prefix: one bool per top-level entry
  by_prefix = run(optim.lars(0.3, exclude=prefix), grads)
  by_tree = run(optim.lars(0.3, exclude=jax.tree.map(lambda _: False, W0)
                           | {"bias": True}), grads)
  for a, b in zip(jax.tree.leaves(by_prefix), jax.tree.leaves(by_tree)):
    np.testing.assert_array_equal(a, b)


def test_bad_masks_name_the_argument_and_the_fix():
  with pytest.raises(ValueError, match=r"(?s)lars\(exclude=\.\.\.\).*prefix"):
    run(optim.lars(0.1, exclude={"no_such_key": True}), gradient_sequence(1))
  with pytest.raises(TypeError, match=r"static_args=\('exclude',\)"):
    optim.lars(0.1, exclude=lambda p: jax.tree.map(jnp.asarray, W0)).update(
        W0, optim.lars(0.1).init(W0), W0)  # arrays, not Python bools


def test_masks_under_inject_hyperparams_as_optax_takes_them():
  # A bool is static for inject_hyperparams; a function must be named in
  # static_args (optax calls other callables with the step count, as schedules).
  grads = gradient_sequence(3)
  direct = run(optim.lars(0.1, exclude=True), grads)
  injected = run(optax.inject_hyperparams(optim.lars)(learning_rate=0.1,
                                                      exclude=True), grads)
  by_fn = run(optax.inject_hyperparams(optim.lars, static_args=("exclude",))(
      learning_rate=0.1, exclude=lambda p: jax.tree.map(lambda _: True, p)), grads)
  for a, b, c in zip(jax.tree.leaves(direct), jax.tree.leaves(injected),
                     jax.tree.leaves(by_fn)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_complex_parameters_are_refused_not_truncated():
  w = {"z": jnp.array([1 + 2j, 3 - 1j], jnp.complex64),
       "m": jnp.ones((2, 2), jnp.complex64)}
  tx = optim.lars(0.1, exclude=False)
  with pytest.raises(TypeError, match="complex parameters"):
    tx.update(w, tx.init(w), w)


def test_everything_after_the_learning_rate_is_keyword_only():
  # optax.lars(1.0, 1e-4) sets the weight decay; ours must not silently take the
  # same call as a momentum.
  optax.lars(1.0, 1e-4)
  with pytest.raises(TypeError, match="positional"):
    optim.lars(1.0, 1e-4)  # pylint: disable=too-many-function-args


def test_build_called_as_a_library_names_total_steps():
  with pytest.raises(ValueError, match=r"build\(total_steps=300\.0\)"):
    optim.build({"name": "sgd", "learning_rate": 0.1}, 300.0)


@pytest.mark.parametrize("exclude", [optim.exclude_ndim_le_1,
                                     lambda p: jax.tree.map(lambda _: False, p)])
def test_mask_function_scheduled_by_inject_hyperparams_is_refused(exclude):
  # Without static_args optax calls the function with the step count:
  # exclude_ndim_le_1(count) is True (ndim 0), which used to end in "ValueError:
  # Expected dict, got True." and would otherwise read as "exclude every tensor".
  params = jax.tree.map(jnp.asarray, W0)
  tx = optax.inject_hyperparams(optim.lars)(learning_rate=0.1, exclude=exclude)
  with pytest.raises(TypeError, match=r"exclude: .*static_args=\('exclude',\)"):
    tx.init(params)
