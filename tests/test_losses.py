"""Losses against numpy written from each paper's formula (float64), plus config.

Reference helpers below use only numpy and the formulas as the papers state them;
none calls jaxtrain.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtrain import config as config_lib
from jaxtrain import losses
from jaxtrain import step as step_lib
from jaxtrain.errors import ConfigError
from jaxtrain.state import TrainState

K = 5
RNG = np.random.default_rng(0)
LOGITS = (3 * RNG.normal(size=(6, K))).astype(np.float32)
LABELS = np.array([0, 1, 4, 2, 3, 1], np.int32)
TEACHER = (2 * RNG.normal(size=(6, K))).astype(np.float32)
SOFT = RNG.dirichlet(np.ones(K), size=6).astype(np.float32)  # rows sum to 1
EXTREME = np.array([[1e4, -1e4, 0, 50, -50], [-1e4, 1e4, 3, -3, 0]], np.float32)


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_log_sigmoid(z):
  return -np.logaddexp(0.0, -np.asarray(z, np.float64))  # log 1/(1+e^-z)


def np_smoothed(targets, eps):
  return (1 - eps) * targets + eps / targets.shape[-1]


def np_bce(z, t):
  """-t log sigma(z) - (1 - t) log(1 - sigma(z)), with 1 - sigma(z) = sigma(-z)."""
  return -t * np_log_sigmoid(z) - (1 - t) * np_log_sigmoid(-z)


def call(loss, logits, **batch):
  if "label" not in batch:
    batch["label"] = LABELS[:len(logits)]
  out = jax.jit(loss)(jnp.asarray(logits), batch)
  assert out.dtype == jnp.float32 and out.shape == (len(logits),)
  return np.asarray(out)


# --- softmax cross-entropy -----------------------------------------------------

@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_cross_entropy_of_labels_and_smoothing(eps):
  t = np_smoothed(np.eye(K)[LABELS], eps)
  want = -(t * np_log_softmax(LOGITS)).sum(-1)
  got = call(losses.get_loss("softmax_cross_entropy", label_smoothing=eps), LOGITS)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_softmax_cross_entropy_reads_soft_targets_instead_of_labels():
  want = -(np_smoothed(SOFT, 0.2) * np_log_softmax(LOGITS)).sum(-1)
  got = call(losses.SoftmaxCrossEntropy(0.2), LOGITS, targets=SOFT)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cross_entropy_is_finite_and_exact_for_extreme_logits():
  t = np.eye(K)[[1, 0]]
  want = -(t * np_log_softmax(EXTREME)).sum(-1)  # row 0: 2e4, row 1: 2e4
  got = call(losses.SoftmaxCrossEntropy(), EXTREME, label=np.array([1, 0]))
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax_cross_entropy",
                                  "sigmoid_binary_cross_entropy", "focal", "mse"])
def test_bfloat16_logits_give_the_float32_loss_of_their_values(name):
  low = jnp.asarray(LOGITS, jnp.bfloat16)
  rounded = np.asarray(low.astype(jnp.float32))
  loss = losses.get_loss(name)
  got = call(loss, low)
  np.testing.assert_allclose(got, call(loss, rounded), rtol=1e-6)


# --- sigmoid binary cross-entropy (RSB / timm) ---------------------------------

def test_binary_cross_entropy_follows_timm_smoothing_and_class_mean():
  eps = 0.1
  off, on = eps / K, 1 - eps + eps / K   # timm BinaryCrossEntropy
  t = np.where(np.eye(K)[LABELS] == 1, on, off)
  want = np_bce(LOGITS, t).mean(-1)
  got = call(losses.get_loss("sigmoid_binary_cross_entropy", label_smoothing=eps),
             LOGITS)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_binary_cross_entropy_threshold_and_sum_over_classes():
  mixed = 0.7 * np.eye(K)[LABELS] + 0.3 * np.eye(K)[np.roll(LABELS, 1)]
  t = (mixed > 0.2).astype(np.float64)  # both mixed classes become positives
  want = np_bce(LOGITS, t).sum(-1)
  loss = losses.get_loss("sigmoid_binary_cross_entropy", target_threshold=0.2,
                         reduction="sum")
  np.testing.assert_allclose(call(loss, LOGITS, targets=mixed), want, rtol=1e-5)


def test_binary_cross_entropy_is_finite_for_extreme_logits():
  t = np.eye(K)[[1, 0]]
  got = call(losses.SigmoidBinaryCrossEntropy(), EXTREME, label=np.array([1, 0]))
  np.testing.assert_allclose(got, np_bce(EXTREME, t).mean(-1), rtol=1e-6)


# --- focal loss (Lin et al. 2017) ----------------------------------------------

def np_focal(z, t, alpha, gamma):
  """Eq. 5 for binary t: -alpha_t (1 - p_t)^gamma log p_t, linear in t otherwise."""
  p = np.exp(np_log_sigmoid(z))
  p_t = p * t + (1 - p) * (1 - t)
  alpha_t = alpha * t + (1 - alpha) * (1 - t)
  return alpha_t * (1 - p_t) ** gamma * np_bce(z, t)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.5), (0.75, 5.0)])
def test_focal_loss_matches_the_paper(alpha, gamma):
  want = np_focal(LOGITS, np.eye(K)[LABELS], alpha, gamma).sum(-1)
  got = call(losses.get_loss("focal", alpha=alpha, gamma=gamma), LOGITS)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_focal_loss_with_soft_targets():
  want = np_focal(LOGITS, SOFT, 0.25, 2.0).sum(-1)
  np.testing.assert_allclose(call(losses.FocalLoss(), LOGITS, targets=SOFT), want,
                             rtol=1e-5)


def test_focal_loss_without_focusing_or_alpha_is_the_summed_bce():
  want = np_bce(LOGITS, np.eye(K)[LABELS]).sum(-1)
  got = call(losses.FocalLoss(alpha=None, gamma=0.0), LOGITS)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grad = jax.grad(lambda z: losses.FocalLoss(alpha=None, gamma=0.0)(
      z, {"label": jnp.array([1, 0])}).sum())(jnp.asarray(EXTREME))
  assert np.isfinite(np.asarray(grad)).all()


def test_focal_loss_downweights_easy_examples_at_extreme_logits():
  # p_t -> 1: the loss vanishes (finite, >= 0) instead of giving 0 * inf.
  got = call(losses.FocalLoss(), EXTREME, label=np.array([0, 1]))
  assert np.isfinite(got).all() and (got >= 0).all()
  np.testing.assert_allclose(
      got, np_focal(EXTREME, np.eye(K)[[0, 1]], 0.25, 2.0).sum(-1), rtol=1e-5,
      atol=1e-30)


# --- regression ----------------------------------------------------------------

PRED = (2 * RNG.normal(size=(6, 3))).astype(np.float32)
TARGET = (2 * RNG.normal(size=(6, 3))).astype(np.float32)


def np_huber(r, delta):
  r = np.abs(r)
  return np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))


def test_mse_mean_and_sum_over_outputs():
  r = PRED.astype(np.float64) - TARGET
  np.testing.assert_allclose(call(losses.get_loss("mse"), PRED, targets=TARGET),
                             (r**2).mean(-1), rtol=1e-6)
  np.testing.assert_allclose(
      call(losses.get_loss("mse", reduction="sum"), PRED, targets=TARGET),
      (r**2).sum(-1), rtol=1e-6)


def test_mse_of_one_hot_labels_without_targets():
  want = ((LOGITS.astype(np.float64) - np.eye(K)[LABELS])**2).mean(-1)
  np.testing.assert_allclose(call(losses.MeanSquaredError(), LOGITS), want, rtol=1e-6)


@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_huber_is_quadratic_inside_delta_and_linear_outside(delta):
  r = PRED.astype(np.float64) - TARGET
  assert (np.abs(r) < delta).any() and (np.abs(r) > delta).any()
  got = call(losses.get_loss("huber", delta=delta), PRED, targets=TARGET)
  np.testing.assert_allclose(got, np_huber(r, delta).mean(-1), rtol=1e-6)


def test_smooth_l1_follows_fast_rcnn():
  beta = 0.5
  r = np.abs(PRED.astype(np.float64) - TARGET)
  want = np.where(r < beta, 0.5 * r**2 / beta, r - 0.5 * beta).sum(-1)
  got = call(losses.get_loss("smooth_l1", beta=beta, reduction="sum"), PRED,
             targets=TARGET)
  np.testing.assert_allclose(got, want, rtol=1e-6)


# --- distillation (Hinton et al. 2015) -----------------------------------------

def np_kl_t2(student, teacher, T):
  logp, logq = np_log_softmax(teacher / T), np_log_softmax(student / T)
  return T**2 * (np.exp(logp) * (logp - logq)).sum(-1)


@pytest.mark.parametrize("T,w", [(1.0, 1.0), (4.0, 0.9), (2.0, 0.3)])
def test_distillation_mixes_t2_kl_with_the_hard_loss(T, w):
  hard = -(np.eye(K)[LABELS] * np_log_softmax(LOGITS)).sum(-1)
  want = w * np_kl_t2(LOGITS, TEACHER, T) + (1 - w) * hard
  loss = losses.get_loss("distillation", temperature=T, weight=w)
  np.testing.assert_allclose(call(loss, LOGITS, teacher_logits=TEACHER), want,
                             rtol=1e-5)


def test_distillation_soft_gradient_is_t_times_q_minus_p():
  # Hinton et al. Eq. 2: d CE / dz_i = (q_i - p_i) / T; times T^2 -> T (q_i - p_i).
  T = 3.0
  loss = losses.Distillation(temperature=T, weight=1.0)
  g_student, g_teacher = jax.grad(
      lambda s, t: loss(s, {"label": LABELS, "teacher_logits": t}).sum(),
      argnums=(0, 1))(jnp.asarray(LOGITS), jnp.asarray(TEACHER))
  p = np.exp(np_log_softmax(TEACHER / T))
  q = np.exp(np_log_softmax(LOGITS / T))
  np.testing.assert_allclose(g_student, T * (q - p), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(g_teacher, 0.0)  # the teacher is not trained


def test_distillation_of_an_ensemble_uses_the_mean_softened_distribution():
  T = 2.0
  members = np.stack([TEACHER, -TEACHER, 0.5 * TEACHER])
  p = np.mean([np.exp(np_log_softmax(m / T)) for m in members], axis=0)
  logq = np_log_softmax(LOGITS / T)
  want = T**2 * (p * (np.log(p) - logq)).sum(-1)
  got = call(losses.Distillation(temperature=T, weight=1.0), LOGITS,
             teacher_logits=members)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_distillation_forwards_other_options_to_its_hard_loss():
  loss = losses.get_loss("distillation", temperature=2.0, weight=0.5,
                         hard_loss="sigmoid_binary_cross_entropy",
                         label_smoothing=0.1)
  t = np_smoothed(np.eye(K)[LABELS], 0.1)
  want = 0.5 * np_kl_t2(LOGITS, TEACHER, 2.0) + 0.5 * np_bce(LOGITS, t).mean(-1)
  np.testing.assert_allclose(call(loss, LOGITS, teacher_logits=TEACHER), want,
                             rtol=1e-5)


def test_distillation_without_teacher_logits_names_the_contract():
  with pytest.raises(ConfigError, match="teacher_logits"):
    losses.Distillation()(jnp.asarray(LOGITS), {"label": LABELS})


# --- the train step with a configured loss -------------------------------------

class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(K)(x)


@pytest.fixture(scope="module")
def linear_state():
  x = RNG.normal(size=(6, 4)).astype(np.float32)
  model, tx = Linear(), optax.sgd(0.1)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                     opt_state=tx.init(params), rng=jax.random.PRNGKey(1))
  return model, tx, state, x


def test_train_step_minimises_the_configured_loss_with_batch_teacher_logits(
    linear_state):
  model, tx, state, x = linear_state
  loss = losses.Distillation(temperature=2.0, weight=0.7)
  step = jax.jit(step_lib.make_train_step(model, tx, loss=loss))
  _, metrics = step(state, {"image": x, "label": LABELS, "teacher_logits": TEACHER})
  w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(state.params["Dense_0"]["bias"], np.float64)
  z = x @ w + b
  hard = -(np.eye(K)[LABELS] * np_log_softmax(z)).sum(-1)
  want = 0.7 * np_kl_t2(z, TEACHER, 2.0) + 0.3 * hard
  np.testing.assert_allclose(metrics["loss"], want.sum(), rtol=1e-5)


def test_teacher_fn_fills_in_missing_teacher_logits(linear_state):
  model, tx, state, x = linear_state
  loss = losses.Distillation(temperature=2.0, weight=1.0)
  proj = RNG.normal(size=(4, K)).astype(np.float32)
  via_fn = jax.jit(step_lib.make_train_step(
      model, tx, loss=loss, teacher_fn=lambda images: images @ proj))
  _, got = via_fn(state, {"image": x, "label": LABELS})
  z = x.astype(np.float64) @ np.asarray(state.params["Dense_0"]["kernel"])
  z = z + np.asarray(state.params["Dense_0"]["bias"])
  np.testing.assert_allclose(got["loss"], np_kl_t2(z, x @ proj, 2.0).sum(),
                             rtol=1e-5)


def test_the_step_takes_label_smoothing_through_its_loss_only(linear_state):
  model, tx, _, _ = linear_state
  with pytest.raises(TypeError, match="label_smoothing"):
    step_lib.make_train_step(model, tx, label_smoothing=0.1)  # pylint: disable=unexpected-keyword-arg


# --- config --------------------------------------------------------------------

def _config(**loss):
  c = config_lib.base_config()
  c.loss = ml_collections.ConfigDict({"name": "softmax_cross_entropy", **loss})
  return c


@pytest.mark.parametrize("loss,field", [
    (dict(name="hinge"), "loss.name"),
    (dict(name="focal", gamma=-1.0), "loss.gamma"),
    (dict(name="focal", alpha=1.5), "loss.alpha"),
    (dict(name="focal", temperature=2.0), "loss.temperature"),
    (dict(name="huber", delta=0.0), "loss.delta"),
    (dict(name="mse", reduction="max"), "loss.reduction"),
    (dict(name="distillation", temperature=0.0), "loss.temperature"),
    (dict(name="distillation", weight=1.5), "loss.weight"),
    (dict(name="distillation", hard_loss="distillation"), "loss.hard_loss"),
    (dict(name="distillation", hard_loss="mse", label_smoothing=0.1),
     "loss.label_smoothing"),
    (dict(label_smoothing=1.0), "loss.label_smoothing"),
])
def test_validate_names_the_bad_loss_field(loss, field):
  with pytest.raises(ConfigError) as e:
    config_lib.validate(_config(**loss))
  assert e.value.field == field


def test_label_smoothing_has_one_field_and_the_old_ones_name_it():
  c = _config(name="sigmoid_binary_cross_entropy", label_smoothing=0.1)
  assert losses.from_config(c) == losses.SigmoidBinaryCrossEntropy(0.1)
  old = _config()
  old.train.label_smoothing = 0.1  # an experiment file written before the move
  with pytest.raises(ConfigError, match="moved: set loss.label_smoothing") as e:
    config_lib.validate(old)
  assert e.value.field == "train.label_smoothing"
  with pytest.raises(ConfigError, match="moved: set loss.label_smoothing"):
    config_lib.apply_overrides(config_lib.base_config(),
                               ["train.label_smoothing=0.1"])
  with pytest.raises(ConfigError) as e:
    config_lib.validate(_config(name="mse", label_smoothing=0.1))
  assert e.value.field == "loss.label_smoothing"
  c = _config(label_smoothing=0.1)
  c.data.train_transforms = "label_smoothing(0.1)"
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert e.value.field == "data.train_transforms"


def test_command_line_sets_loss_options_of_the_chosen_loss():
  c = config_lib.apply_overrides(config_lib.base_config(), [
      "loss.name=distillation", "loss.temperature=4", "loss.weight=0.9",
      "loss.label_smoothing=0.1"])
  config_lib.validate(c)
  assert losses.from_config(c) == losses.Distillation(
      temperature=4, weight=0.9, hard=losses.SoftmaxCrossEntropy(0.1))
  with pytest.raises(ConfigError, match="did you mean 'gamma'"):
    config_lib.apply_overrides(config_lib.base_config(),
                               ["loss.name=focal", "loss.gama=1"])
