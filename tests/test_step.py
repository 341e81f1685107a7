"""The train step against a step computed by hand in numpy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain import losses
from jaxtrain import step as step_lib
from jaxtrain.state import TrainState


class Linear(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _np_softmax_xent_grads(w, b, x, y, num_classes, smoothing=0.0):
  """d/dW, d/db of mean softmax cross-entropy of x @ w + b (derived by hand)."""
  logits = x @ w + b
  z = logits - logits.max(1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  t = np.eye(num_classes)[y] * (1 - smoothing) + smoothing / num_classes
  loss = -(t * np.log(p)).sum(1)
  dlogits = (p - t) / len(y)
  return loss, x.T @ dlogits, dlogits.sum(0), logits


def _state(model, tx, x):
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                    opt_state=tx.init(params), rng=jax.random.PRNGKey(1))


def test_momentum_steps_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 4)).astype(np.float32)
  y = np.array([0, 1, 2, 2, 1, 0], np.int32)
  lr, mu = 0.3, 0.9
  tx = optax.sgd(lr, momentum=mu)
  model = Linear()
  state = _state(model, tx, x)
  w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(state.params["Dense_0"]["bias"], np.float64)
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  step = jax.jit(step_lib.make_train_step(model, tx,
                                          loss=losses.SoftmaxCrossEntropy(0.1)))
  for _ in range(3):
    loss, gw, gb, logits = _np_softmax_xent_grads(w, b, x, y, 3, smoothing=0.1)
    # Heavy-ball momentum as optax/TF apply it: v <- mu v + g; w <- w - lr v.
    vw, vb = mu * vw + gw, mu * vb + gb
    w, b = w - lr * vw, b - lr * vb
    state, metrics = step(state, {"image": x, "label": y})
    np.testing.assert_allclose(metrics["loss"], loss.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"],
                               (logits.argmax(1) == y).sum(), rtol=0)
  np.testing.assert_allclose(state.params["Dense_0"]["kernel"], w, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(state.params["Dense_0"]["bias"], b, rtol=1e-5, atol=1e-6)
  assert int(state.step) == 3


def test_nonfinite_step_keeps_state_and_names_the_leaf():
  x = np.ones((2, 4), np.float32)
  x[0, 0] = np.nan
  y = np.array([0, 1], np.int32)
  tx = optax.sgd(0.1, momentum=0.9)
  model = Linear()
  state = _state(model, tx, np.ones((2, 4), np.float32))
  before = jax.device_get(state.params)
  step = jax.jit(step_lib.make_train_step(model, tx))
  state, metrics = step(state, {"image": x, "label": y})
  assert float(metrics["skipped"]) == 1.0
  assert int(metrics["nonfinite_step"]) == 0
  # Leaves in jax.tree.leaves order: Dense_0/bias, Dense_0/kernel; both see the NaN.
  np.testing.assert_array_equal(metrics["nonfinite_leaves"], [1.0, 1.0])
  assert int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)


def test_eval_step_weights_rows_by_mask():
  x = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
  y = np.array([0, 1, 2, 0], np.int32)
  tx = optax.sgd(0.1)
  model = Linear()
  state = _state(model, tx, x)
  mask = np.array([1, 1, 1, 0], np.float32)
  out = jax.jit(step_lib.make_eval_step(model))(
      state, {"image": x, "label": y, "mask": mask})
  w = np.asarray(state.params["Dense_0"]["kernel"])
  b = np.asarray(state.params["Dense_0"]["bias"])
  loss, _, _, logits = _np_softmax_xent_grads(w, b, x, y, 3)
  np.testing.assert_allclose(out["loss"], loss[:3].sum(), rtol=1e-5)
  assert float(out["count"]) == 3.0
  assert float(out["accuracy"]) == float((logits.argmax(1) == y)[:3].sum())


def test_soft_targets_replace_labels_in_the_loss():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(4, 4)).astype(np.float32)
  y = np.array([0, 1, 2, 0], np.int32)
  lam = 0.7  # a mixup of each row with the next one's label
  targets = lam * np.eye(3)[y] + (1 - lam) * np.eye(3)[np.roll(y, 1)]
  tx = optax.sgd(0.1)
  model = Linear()
  state = _state(model, tx, x)
  _, metrics = jax.jit(step_lib.make_train_step(model, tx))(
      state, {"image": x, "label": y, "targets": targets.astype(np.float32)})
  w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(state.params["Dense_0"]["bias"], np.float64)
  logits = x @ w + b
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(metrics["loss"], -(targets * logp).sum(), rtol=1e-5)


class DeepMLP(nn.Module):
  depth: int = 24

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape(x.shape[0], -1)
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(8)(x))
    return nn.Dense(3)(x)


def test_finiteness_guard_is_not_gradient_leaves_times_state_leaves_ops():
  """The skip-if-not-finite guard must not cost (gradient leaves) x (state leaves)
  ops. XLA evaluates the guard inside each state leaf's select fusion; with one
  is_finite per gradient leaf it folded all() into a chain of ands and copied the
  whole chain into every select: 50 x 100 = 5,252 is-finite ops here (and 68k,
  5x the compile time, for ResNet-50). One is_finite of the stacked sums keeps
  it to about one op per state leaf."""
  x = np.ones((4, 5), np.float32)
  model, tx = DeepMLP(), optax.sgd(0.1, momentum=0.9)
  state = _state(model, tx, x)
  grad_leaves = len(jax.tree.leaves(state.params))
  state_leaves = len(jax.tree.leaves((state.params, state.opt_state)))
  assert (grad_leaves, state_leaves) == (50, 100)
  hlo = jax.jit(step_lib.make_train_step(model, tx)).lower(
      state, {"image": x, "label": np.zeros(4, np.int32)}).compile().as_text()
  is_finite = hlo.count(" is-finite(")
  assert is_finite <= 3 * state_leaves, is_finite
