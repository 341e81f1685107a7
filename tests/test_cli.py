"""Bad configs and bad invocations: exit code 2, one line naming the field."""
import hashlib
import os
import subprocess

import pytest

import processes

from jaxtrain import cli, runner

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments",
                          "digits_cnn.py")

# A short run whose checkpoint every bad invocation below must leave untouched.
BASE = ["--config.model.name=mlp", "--config.train.num_steps=4",
        "--config.train.num_epochs=0", "--config.checkpoint.every=2",
        "--config.train.steps_per_dispatch=1", "--config.train.eval_every=0",
        "--config.train.log_every=2", "--config.optimizer.schedule.warmup_steps=1"]

BAD = [
    # (overrides and flags, the field the message must name)
    (["--config.train.batchsize=3"], "config.train.batchsize"),
    (["--config.train.batch_size=abc"], "config.train.batch_size"),
    (["--config.train.num_steps=-5"], "config.train.num_steps"),
    (["--config.train.batch_size=12"], "config.train.batch_size"),  # 8 devices
    (["--config.train.label_smoothing=1.5"], "config.train.label_smoothing"),
    (["--config.train.on_nonfinite=ignore"], "config.train.on_nonfinite"),
    (["--config.train.log_every=0"], "config.train.log_every"),
    (["--config.train.num_epochs=-1.0"], "config.train.num_epochs"),
    (["--config.train.steps_per_dispatch=0"], "config.train.steps_per_dispatch"),
    (["--config.train.profile_steps=(5, 2)"], "config.train.profile_steps"),
    (["--config.train.peak_tflops=-1.0"], "config.train.peak_tflops"),
    (["--config.optimizer.name=adamax_typo"], "config.optimizer.name"),
    (["--config.optimizer.learning_rate=-0.1"], "config.optimizer.learning_rate"),
    (["--config.optimizer.learning_rate=nan"], "config.optimizer.learning_rate"),
    (["--config.optimizer.momentum=fast"], "config.optimizer.momentum"),
    (["--config.optimizer.schedule.name=triangle"], "config.optimizer.schedule.name"),
    (["--config.optimizer.schedule.warmup_steps=100000"],
     "config.optimizer.schedule.warmup_steps"),
    (["--config.optimizer.freeze=('[unclosed',)"], "config.optimizer.freeze[0]"),
    (["--config.model.name=vgg"], "config.model.name"),
    (["--config.model.widht=3"], "config.model.widht"),
    (["--config.model.name=resnet18", "--config.model.bn_group_size=3"],
     "config.model.bn_group_size"),
    (["--config.data.source=imagenet_on_floppy"], "config.data.source"),
    (["--config.data.name=no_such_dataset"], "config.data.name"),
    (["--config.data.eval_split=validation"], "config.data.eval_split"),
    (["--config.data.image_shape=(32, 32, 3)"], "config.data.image_shape"),
    (["--config.data.train_transforms=nosuchop(3)"], "config.data.train_transforms"),
    (["--config.mesh.data=3"], "config.mesh"),
    (["--config.mesh.fsdp=0"], "config.mesh.fsdp"),
    (["--config.mesh.data=-1", "--config.mesh.fsdp=-1"], "config.mesh.fsdp"),
    (["--config.precision.compute_dtype=float8"], "config.precision.compute_dtype"),
    (["--config.checkpoint.keep=0"], "config.checkpoint.keep"),
    (["--config.checkpoint.restore=sometimes"], "config.checkpoint.restore"),
    (["--config.nosuchsection.x=1"], "config.nosuchsection"),
    (["--config.model.name=cnn"], "config.checkpoint.restore"),  # other model
    (["--num_processes=2"], "--coordinator_address"),
]


def _digest(directory):
  """Every file's path and bytes under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(root, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, directory)] = hashlib.sha256(fh.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  assert cli.main(["train", f"--config={EXPERIMENT}", f"--workdir={workdir}",
                   *BASE]) == 0
  return workdir


@pytest.mark.parametrize("overrides,field", BAD, ids=[b[1] + str(i)
                                                      for i, b in enumerate(BAD)])
def test_bad_config_exits_2_naming_field_and_keeps_checkpoints(
    overrides, field, trained_workdir, capsys):
  before = _digest(trained_workdir / "checkpoints")
  assert len(before) > 5
  capsys.readouterr()
  code = cli.main(["train", f"--config={EXPERIMENT}", f"--workdir={trained_workdir}",
                   *BASE, *overrides])
  err = capsys.readouterr().err
  assert code == 2, err
  assert f"{field}=" in err, err
  assert "Traceback" not in err
  assert _digest(trained_workdir / "checkpoints") == before


def test_unwritable_workdir_exits_2(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  code = cli.main(["train", f"--config={EXPERIMENT}", f"--workdir={blocker}/run",
                   *BASE])
  assert code == 2
  assert "--workdir=" in capsys.readouterr().err


def test_missing_bucket_exits_2_naming_workdir_and_the_fix(gcs, capsys):
  """gs:// workdirs are probed up front too (against the GCS emulator), not at the
  first checkpoint or log write after compilation."""
  code = cli.main(["train", f"--config={EXPERIMENT}",
                   "--workdir=gs://no-such-bucket/run", *BASE])
  err = capsys.readouterr().err
  assert code == 2, err
  assert "--workdir='gs://no-such-bucket/run': cannot write there" in err
  assert "gcloud storage buckets create gs://no-such-bucket" in err
  assert gcs.buckets() == ["bucket"]  # the check created no bucket
  runner.check_workdir("gs://bucket/run")  # an existing bucket passes ...
  assert gcs.names("") == []                 # ... and keeps no probe object


def test_restore_required_without_checkpoint_exits_2(tmp_path, capsys):
  code = cli.main(["train", f"--config={EXPERIMENT}", f"--workdir={tmp_path}", *BASE,
                   "--config.checkpoint.restore=required"])
  assert code == 2
  assert "config.checkpoint.restore=" in capsys.readouterr().err


def test_missing_experiment_file_exits_2(tmp_path, capsys):
  code = cli.main(["train", "--config=experiments/nope.py", f"--workdir={tmp_path}"])
  assert code == 2
  assert "nope.py" in capsys.readouterr().err


def test_console_script_exit_code_and_help(tmp_path):
  bad = subprocess.run(
      [*processes.jaxtrain_cmd(), "train", f"--config={EXPERIMENT}",
       f"--workdir={tmp_path}", "--config.optimizer.name=nope"],
      capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2
  assert "config.optimizer.name" in bad.stderr and "Traceback" not in bad.stderr
  unknown_flag = subprocess.run(
      [*processes.jaxtrain_cmd(), "train", f"--config={EXPERIMENT}",
       f"--workdir={tmp_path}", "--lr=3"], capture_output=True, text=True, timeout=120)
  assert unknown_flag.returncode == 2 and "--lr=3" in unknown_flag.stderr
  helptext = subprocess.run([*processes.jaxtrain_cmd(), "train", "--help"],
                            capture_output=True, text=True, timeout=120).stdout
  for flag in ("--config", "--workdir", "--config.SECTION.FIELD", "--coordinator_address",
               "--num_processes", "--process_id"):
    assert flag in helptext


def test_optim_summary_shows_bn_and_biases_excluded_from_lars():
  # A fresh process: the summary must not depend on what earlier tests set up.
  proc = subprocess.run(
      [*processes.jaxtrain_cmd(), "optim-summary", f"--config={EXPERIMENT}",
       "--config.model.name=resnet18", "--config.optimizer.name=lars",
       "--config.optimizer.weight_decay=1e-4", "--config.optimizer.freeze=('^stem',)"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  rows = [line.split() for line in proc.stdout.splitlines()
          if "/" in line.split(" ")[0]]
  assert len(rows) > 40, proc.stdout
  for row in rows:
    path, decay, trust, frozen = row[0], row[-4], row[-3], row[-1]
    if path.startswith("stem"):
      assert frozen == "yes" and decay == "-"
    elif path.endswith("kernel"):  # conv and dense kernels: decayed, trust ratio
      assert (decay, trust, frozen) == ("yes", "yes", "-"), row
    else:  # BN scale/bias and dense biases: neither
      assert (decay, trust) == ("-", "-"), row
