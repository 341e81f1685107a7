"""The measured knee and the noise-scale prediction of the critical batch, on
hand-made sweep results, against values worked out by hand / numpy."""
import math

import numpy as np

from jaxtrain.study import critical_batch, plots, report

KEY = "train/gradient_noise_scale"
# Steps to target following McCandlish et al. 2018's model exactly:
# S(B) = S_min (1 + B_crit / B) with S_min = 100, B_crit = 64.
MODEL_STEPS = {8: 900, 16: 500, 32: 300, 64: 200, 128: 150, 256: 125}


def _records(optimizer, steps_by_batch, noise=None):
  """One reached trial per batch size; `noise[b]` = (first value, value at the
  target step, value after it) of its logged noise scale."""
  out = []
  for b, s in steps_by_batch.items():
    curve = [{"step": step} for step in (s // 2, s, s + 10)]
    if noise:
      for row, value in zip(curve, noise[b]):
        row[KEY] = value
    out.append({"trial": f"{optimizer}-{b}", "optimizer": optimizer,
                "batch_size": b, "status": "reached", "diverged": False,
                "wall_time_s": 1.0, "group_size": 1, "steps_to_target": s,
                "examples_to_target": s * b, "learning_rate": 0.1,
                "warmup_steps": 0, "curve": curve})
  return out


def _model_knee() -> float:
  """The knee of MODEL_STEPS by hand: E(b) = b * S(b), efficiency E_min / E(b)."""
  sizes = np.array(list(MODEL_STEPS))
  examples = sizes * np.array(list(MODEL_STEPS.values()))
  eff = examples.min() / examples  # 1, 0.9, 0.75, 0.5625, 0.375, 0.225
  np.testing.assert_allclose(eff, [1, 0.9, 0.75, 0.5625, 0.375, 0.225])
  # Falls through 0.5 between 64 and 128; linear in log2(b) (np.interp needs
  # increasing x, so interpolate log2(b) as a function of efficiency).
  return 2 ** np.interp(0.5, [eff[4], eff[3]], [7, 6])


def test_knee_interpolates_the_efficiency_crossing_in_log2_batch():
  records = _records("sgd", MODEL_STEPS)
  crit = critical_batch.critical_batches(records, report.summary_rows(records))
  knee = crit["sgd"].knee
  assert math.isclose(knee, _model_knee(), rel_tol=1e-12)
  # The model's B_crit is 64; the fewest examples tried (at b = 8) are E_min
  # times 1 + 8 / 64, so the efficiency is 1.125 / (1 + B / 64), 0.5 at B = 80:
  # the knee lands there, not at 64.
  assert abs(knee - 80) < 2, knee


def test_a_slow_smallest_batch_does_not_move_the_knee():
  # The same study with batch 8 needing 10x the steps (a badly tuned LARS, say):
  # against batch 8 every larger batch would look > 100% efficient; against the
  # fewest examples (batch 16's) the knee is the model's crossing of
  # 8000 / E(b) through 0.5 between 64 (0.625) and 128 (0.417).
  slow = {**MODEL_STEPS, 8: 9000}
  records = _records("lars", slow)
  crit = critical_batch.critical_batches(records, report.summary_rows(records))
  expected = 2 ** np.interp(0.5, [8000 / 19200, 8000 / 12800], [7, 6])
  assert math.isclose(crit["lars"].knee, expected, rel_tol=1e-12)


def test_no_crossing_gives_no_knee():
  assert critical_batch.efficiency_knee([16, 32, 64], [1.0, 0.9, 0.6]) is None
  assert critical_batch.efficiency_knee([16], [1.0]) is None


NOISE = {8: (30.0, 50.0, 99.0), 16: (20.0, 70.0, 99.0), 32: (40.0, 60.0, 99.0),
         64: (10.0, 90.0, 99.0), 128: (35.0, float("nan"), 99.0),
         256: (25.0, 55.0, 99.0)}


def test_prediction_is_the_median_noise_scale_early_and_at_the_target():
  records = _records("sgd", MODEL_STEPS, NOISE)
  crit = critical_batch.critical_batches(records, report.summary_rows(records))
  early = np.median([v[0] for v in NOISE.values()])
  # At the target step: the value logged there; a NaN there falls back to the
  # value logged before it (batch 128: 35).
  at_target = np.median([50, 70, 60, 90, 35, 55])
  assert crit["sgd"].predicted_early == early == 27.5
  assert crit["sgd"].predicted_at_target == at_target == 57.5


def test_report_md_puts_the_knee_beside_the_prediction():
  records = _records("sgd", MODEL_STEPS, NOISE) + _records(
      "adam", {16: 800, 32: 400, 64: 200})
  text = report.markdown({"target": "eval/accuracy >= 0.9"}, records)
  knee = _model_knee()
  assert (f"| sgd | {knee:.0f} | 28 | 58 | {knee / 57.5:.2f} |") in text, text
  assert "| adam | > 64 (efficiency >= 0.5 throughout) | - | - | - |" in text
  assert "E_min / E(b) first falls through 0.5" in text and "eq. 2.11" in text


def test_report_md_says_how_to_get_the_noise_scale_when_no_trial_logged_it():
  text = report.markdown({}, _records("sgd", MODEL_STEPS))
  assert "No trial logged `train/gradient_noise_scale`, so nothing is predicted" in (
      text)
  assert "train.diagnostics" in text and "more than one data-parallel replica" in text


def test_steps_to_target_png_marks_the_knee_and_the_prediction(tmp_path):
  records = _records("sgd", MODEL_STEPS, NOISE)
  crit = critical_batch.critical_batches(records, report.summary_rows(records))
  fig = plots.steps_to_target_figure(records, "eval/accuracy >= 0.9", crit)
  ax = fig.axes[0]
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  knee = crit["sgd"].knee
  assert f"sgd: knee (efficiency 0.5) {knee:.0f}" in labels
  assert "sgd: noise scale early 28, at target 58" in labels
  vertical = sorted(line.get_xdata()[0] for line in ax.get_lines()
                    if len(set(line.get_xdata())) == 1)
  np.testing.assert_allclose(vertical, sorted([knee, 27.5, 57.5]))
  # Saved as a PNG.
  path = plots.steps_to_target(records, tmp_path / "s.png", "", crit)
  assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
