"""Tests of the Cloud TPU scripts in tpu/, against a fake `gcloud` that records its
arguments (no network, no TPU). The remote commands the scripts send over ssh are
also run here, with bash in a temporary $HOME, to prove what a worker would do."""
from __future__ import annotations

import os
import pathlib
import pty
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TPU = ROOT / "tpu"
SCRIPTS = ["create.sh", "setup.sh", "run.sh", "delete.sh"]
TPU_ARGS = ["--project=my-proj", "--zone=us-central2-b", "--name=pod1"]
TPU_FLAGS = ["--zone=us-central2-b", "--project=my-proj"]

# Overrides that break naive quoting: spaces, quotes, commas, brackets, $, `, globs.
TRICKY_OVERRIDES = [
    "--config.optimizer.lr_multipliers=((\"head\", 10.0),)",
    "--config.optimizer.name=it's got 'single' quotes",
    "--config.data.name=two  spaces, a comma [and] {braces}",
    "--config.train.note=$HOME `echo no` $(echo no) * ? ~ ; && | > <",
    "--config.sharding.rules=[('batch', ('data', 'fsdp')), ('mlp', 'model')]",
    '--config.model.name=back\\slash "double"',
    "--config.train.batch_size=4096",
]

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Fake gcloud: writes its arguments, NUL-separated, to $FAKE_GCLOUD_DIR/call-NNN.
set -eu
d=$FAKE_GCLOUD_DIR
n=$(find "$d" -maxdepth 1 -name 'call-*' | wc -l)
printf '%s\0' "$@" > "$(printf '%s/call-%03d' "$d" "$n")"
if [ "${4:-}" = scp ]; then  # keep the local files scp would send
  for a in "$@"; do if [ -f "$a" ]; then cp "$a" "$d/scp-${a##*/}"; fi; done
fi
if [ -n "${FAKE_GCLOUD_STDOUT:-}" ]; then printf '%s\n' "$FAKE_GCLOUD_STDOUT"; fi
exit "${FAKE_GCLOUD_RC:-0}"
"""


class FakeGcloud:
  def __init__(self, tmp: pathlib.Path):
    self.bin = tmp / "bin"
    self.dir = tmp / "calls"
    self.bin.mkdir()
    self.dir.mkdir()
    exe = self.bin / "gcloud"
    exe.write_text(FAKE_GCLOUD)
    exe.chmod(0o755)
    self.env = {k: v for k, v in os.environ.items()
                if not k.startswith(("JAXTRAIN_", "CLOUDSDK_"))}
    self.env["PATH"] = f"{self.bin}{os.pathsep}{os.environ['PATH']}"
    self.env["FAKE_GCLOUD_DIR"] = str(self.dir)
    self.env["JAXTRAIN_POLL_SECONDS"] = "0"

  def calls(self) -> list[list[str]]:
    files = sorted(self.dir.glob("call-*"))
    return [f.read_bytes().decode().split("\0")[:-1] for f in files]

  def clear(self) -> None:
    for f in self.dir.iterdir():
      f.unlink()

  def run(self, script: str, *args: str, env: dict | None = None, stdin=subprocess.DEVNULL,
          check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(TPU / script), *args], env={**self.env, **(env or {})},
                          stdin=stdin, capture_output=True, text=True, timeout=60)
    if check_rc is not None:
      assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def gcloud(tmp_path):
  return FakeGcloud(tmp_path)


def dry_run_commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line) for line in stdout.splitlines() if not line.startswith("#")]


def remote_command(call: list[str]) -> str:
  """The --command of a recorded `gcloud ... ssh` call."""
  for i, a in enumerate(call):
    if a == "--command":
      return call[i + 1]
    if a.startswith("--command="):
      return a[len("--command="):]
  raise AssertionError(f"no --command in {call}")


def assert_ssh_all(call: list[str]) -> None:
  assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod1"], call
  for flag in TPU_FLAGS + ["--worker=all"]:
    assert flag in call, (flag, call)


# --- every script ------------------------------------------------------------------

HELP_FLAGS = {
    "create.sh": ["--project", "--zone", "--name", "--accelerator-type", "--runtime-version",
                  "--spot", "--preemptible", "--reserved", "--network", "--subnetwork",
                  "--queued", "--queued-id", "--valid-until-duration", "--wait", "--dry-run",
                  "--help"],
    "setup.sh": ["--project", "--zone", "--name", "--internal-ip", "--repo", "--ref",
                 "--local-dir", "--remote-dir", "--venv", "--python", "--jax", "--dry-run",
                 "--help"],
    "run.sh": ["--project", "--zone", "--name", "--internal-ip", "--command", "--config",
               "--workdir",
               "--run", "--env", "--remote-dir", "--venv", "--tail", "--lines", "--worker",
               "--stop", "--dry-run", "--help"],
    "delete.sh": ["--project", "--zone", "--name", "--queued", "--queued-id", "--yes",
                  "--dry-run", "--help"],
}

REQUIRED = {
    "create.sh": ["--project", "--zone", "--name", "--accelerator-type"],
    "setup.sh": ["--project", "--zone", "--name"],
    "run.sh": ["--project", "--zone", "--name", "--config", "--workdir"],
    "delete.sh": ["--project", "--zone", "--name"],
}
VALID = {
    "create.sh": TPU_ARGS + ["--accelerator-type=v4-32"],
    "setup.sh": TPU_ARGS,
    "run.sh": TPU_ARGS + ["--config=experiments/x.py", "--workdir=gs://b/r"],
    "delete.sh": TPU_ARGS + ["--yes"],
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_and_lists_every_flag(gcloud, script):
  for flag in ("--help", "-h"):
    proc = gcloud.run(script, flag)
    assert proc.stdout.startswith("Usage: ")
    for name in HELP_FLAGS[script]:
      assert name in proc.stdout, name
  assert gcloud.calls() == []


@pytest.mark.parametrize("script,flag", [(s, f) for s in SCRIPTS for f in REQUIRED[s]])
def test_missing_required_flag_exits_2_naming_it(gcloud, script, flag):
  args = [a for a in VALID[script] if not a.startswith(flag + "=")]
  proc = gcloud.run(script, *args, check_rc=2)
  assert f"missing required flag {flag}" in proc.stderr
  assert proc.stdout == ""
  assert gcloud.calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_and_missing_value_exit_2(gcloud, script):
  proc = gcloud.run(script, *VALID[script], "--bogus-flag=1", check_rc=2)
  assert "unknown flag: --bogus-flag" in proc.stderr
  proc = gcloud.run(script, *VALID[script], "--zone", check_rc=2)
  assert "--zone needs a value" in proc.stderr
  proc = gcloud.run(script, *VALID[script], "--dry-run=yes", check_rc=2)
  assert "--dry-run takes no value" in proc.stderr
  assert gcloud.calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_env_var_defaults(gcloud, script):
  env = {"JAXTRAIN_PROJECT": "my-proj", "JAXTRAIN_ZONE": "us-central2-b",
         "JAXTRAIN_TPU": "pod1", "JAXTRAIN_ACCELERATOR_TYPE": "v4-32"}
  args = [a for a in VALID[script] if a not in TPU_ARGS and "accelerator" not in a]
  gcloud.run(script, *args, env=env)
  for call in gcloud.calls():
    assert "pod1" in call or "pod1:jaxtrain-src.tar.gz" in call
    for flag in TPU_FLAGS:
      assert flag in call


@pytest.mark.parametrize("script,args", [
    ("create.sh", ["--accelerator-type=v5p-128", "--spot"]),
    ("create.sh", ["--accelerator-type=v4-32", "--queued", "--spot", "--wait"]),
    ("setup.sh", []),
    ("setup.sh", ["--repo=https://example.com/a b.git", "--ref=v1.0", "--internal-ip"]),
    ("run.sh", ["--config=experiments/x.py", "--workdir=gs://b/r", "--", *TRICKY_OVERRIDES]),
    ("run.sh", ["--command=sweep", "--config=experiments/scaling/x.py", "--workdir=s/r",
                "--", *TRICKY_OVERRIDES]),
    ("run.sh", ["--command=lr-find", "--config=experiments/x.py", "--workdir=lr",
                "--", "--min_lr=1e-4", *TRICKY_OVERRIDES]),
    ("run.sh", ["--tail", "--run=r"]),
    ("run.sh", ["--stop"]),
    ("delete.sh", ["--yes"]),
    ("delete.sh", ["--queued", "--yes"]),
])
def test_dry_run_prints_the_commands_it_would_run(gcloud, script, args):
  """Each --dry-run line, parsed as shell words, is exactly a command the real run makes."""
  dry = gcloud.run(script, "--dry-run", *TPU_ARGS, *args)
  assert gcloud.calls() == []
  printed = dry_run_commands(dry.stdout)
  gcloud.run(script, *TPU_ARGS, *args, env={"FAKE_GCLOUD_STDOUT": "ACTIVE"})
  recorded = [["gcloud", *c] for c in gcloud.calls()]
  if script == "setup.sh" and "--repo" not in str(args):  # the local tarball's path differs
    assert printed[0][5] == "/tmp/jaxtrain-src.tar.gz"
    printed[0][5] = recorded[0][5]
  assert printed == recorded


def test_dry_run_line_survives_copy_paste_into_bash(gcloud):
  """Paste a printed command into bash (with `gcloud` swapped for printf): same words."""
  args = [*TPU_ARGS, "--config=experiments/x.py", "--workdir=gs://b/r", "--",
          *TRICKY_OVERRIDES]
  line = gcloud.run("run.sh", "--dry-run", *args).stdout.strip()
  assert line.startswith("gcloud ")
  out = subprocess.run(["bash", "-c", "printf '%s\\0' " + line[len("gcloud "):]],
                       capture_output=True, text=True, check=True).stdout
  gcloud.run("run.sh", *args)
  assert out.split("\0")[:-1] == gcloud.calls()[0]


def test_shellcheck_passes_on_all_scripts(shellcheck):
  files = [str(TPU / s) for s in [*SCRIPTS, "common.sh"]]
  proc = subprocess.run([shellcheck, "-x", *files], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# --- create.sh ---------------------------------------------------------------------

def test_create_tpu_vm(gcloud):
  gcloud.run("create.sh", *TPU_ARGS, "--accelerator-type", "v4-32")
  assert gcloud.calls() == [["compute", "tpus", "tpu-vm", "create", "pod1", *TPU_FLAGS,
                             "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]]


@pytest.mark.parametrize("flag", ["--spot", "--preemptible", "--reserved"])
def test_create_capacity_flags(gcloud, flag):
  gcloud.run("create.sh", *TPU_ARGS, "--accelerator-type=v5litepod-256", flag,
             "--runtime-version=my-runtime", "--network=net", "--subnetwork=sub")
  (call,) = gcloud.calls()
  assert call[:5] == ["compute", "tpus", "tpu-vm", "create", "pod1"]
  assert flag in call
  for a in ["--accelerator-type=v5litepod-256", "--version=my-runtime", "--network=net",
            "--subnetwork=sub", *TPU_FLAGS]:
    assert a in call


@pytest.mark.parametrize("accel,runtime", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5p-128", "v2-alpha-tpuv5"),
    ("v5litepod-256", "v2-alpha-tpuv5-lite"), ("v6e-64", "v2-alpha-tpuv6e")])
def test_create_default_runtime_version_by_type(gcloud, accel, runtime):
  gcloud.run("create.sh", *TPU_ARGS, f"--accelerator-type={accel}")
  assert f"--version={runtime}" in gcloud.calls()[0]


def test_create_queued_resource(gcloud):
  gcloud.run("create.sh", *TPU_ARGS, "--accelerator-type=v5p-128", "--queued", "--spot",
             "--queued-id=qr1", "--valid-until-duration=6h")
  assert gcloud.calls() == [[
      "compute", "tpus", "queued-resources", "create", "qr1", "--node-id=pod1", *TPU_FLAGS,
      "--accelerator-type=v5p-128", "--spot", "--valid-until-duration=6h",
      "--runtime-version=v2-alpha-tpuv5"]]


def test_create_queued_wait_polls_until_active(gcloud):
  gcloud.run("create.sh", *TPU_ARGS, "--accelerator-type=v4-8", "--queued", "--wait",
             env={"FAKE_GCLOUD_STDOUT": "ACTIVE"})
  create, describe = gcloud.calls()
  assert create[:4] == ["compute", "tpus", "queued-resources", "create"]
  assert describe == ["compute", "tpus", "queued-resources", "describe", "pod1", *TPU_FLAGS,
                      "--format=value(state.state)"]
  gcloud.clear()
  proc = gcloud.run("create.sh", *TPU_ARGS, "--accelerator-type=v4-8", "--queued", "--wait",
                    env={"FAKE_GCLOUD_STDOUT": "SUSPENDED"}, check_rc=1)
  assert "SUSPENDED" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--spot", "--preemptible"], "mutually exclusive"),
    (["--spot", "--reserved"], "mutually exclusive"),
    (["--queued", "--preemptible"], "--preemptible does not apply to --queued"),
    (["--wait"], "--wait needs --queued"),
    (["--queued-id=q"], "--queued-id needs --queued"),
    (["--accelerator-type=v4"], "--accelerator-type=v4"),
    (["--accelerator-type=v9x-8"], "--runtime-version"),
])
def test_create_rejects_bad_combinations(gcloud, args, message):
  proc = gcloud.run("create.sh", *TPU_ARGS, "--accelerator-type=v4-32", *args, check_rc=2)
  assert message in proc.stderr
  assert gcloud.calls() == []


# --- delete.sh ---------------------------------------------------------------------

def test_delete_without_yes_and_without_a_terminal_refuses(gcloud):
  proc = gcloud.run("delete.sh", *TPU_ARGS, check_rc=2)
  assert "--yes" in proc.stderr and "refusing" in proc.stderr
  assert gcloud.calls() == []


def test_delete_with_yes(gcloud):
  gcloud.run("delete.sh", *TPU_ARGS, "-y")
  gcloud.run("delete.sh", *TPU_ARGS, "--queued", "--yes")
  assert gcloud.calls() == [
      ["compute", "tpus", "tpu-vm", "delete", "pod1", *TPU_FLAGS, "--quiet"],
      ["compute", "tpus", "queued-resources", "delete", "pod1", *TPU_FLAGS, "--force",
       "--quiet"]]


@pytest.mark.parametrize("answer,deleted", [("y", True), ("n", False), ("", False)])
def test_delete_asks_on_a_terminal(gcloud, answer, deleted):
  master, slave = pty.openpty()
  try:
    proc = subprocess.Popen([str(TPU / "delete.sh"), *TPU_ARGS], env=gcloud.env, stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.write(master, (answer + "\n").encode())
    _, err = proc.communicate(timeout=30)
  finally:
    os.close(master)
    os.close(slave)
  assert "Delete TPU VM pod1" in err
  assert proc.returncode == (0 if deleted else 1), err
  assert len(gcloud.calls()) == (1 if deleted else 0)


# --- setup.sh ----------------------------------------------------------------------

def make_checkout(tmp: pathlib.Path) -> pathlib.Path:
  repo = tmp / "checkout"
  (repo / "jaxtrain").mkdir(parents=True)
  (repo / "pyproject.toml").write_text("[project]\nname = 'jaxtrain'\n")
  (repo / "jaxtrain" / "__init__.py").write_text("")
  (repo / "gone.py").write_text("")
  (repo / ".gitignore").write_text("build/\n")
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run([*git, "init", "-q"], check=True)
  subprocess.run([*git, "add", "."], check=True)
  subprocess.run([*git, "commit", "-qm", "init"], check=True)
  (repo / "gone.py").unlink()                       # tracked, deleted in the tree
  (repo / "new file.py").write_text("x = 1\n")     # untracked: copied (work in progress)
  (repo / "build").mkdir()
  (repo / "build" / "big.bin").write_text("no")    # ignored: not copied
  return repo


def test_setup_copies_the_local_checkout_to_all_workers_and_installs(gcloud, tmp_path):
  repo = make_checkout(tmp_path)
  gcloud.run("setup.sh", *TPU_ARGS, f"--local-dir={repo}", "--jax=jax[tpu]==0.10.2")
  scp, ssh = gcloud.calls()
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == "pod1:jaxtrain-src.tar.gz"
  assert "--worker=all" in scp and all(f in scp for f in TPU_FLAGS)
  with tarfile.open(gcloud.dir / "scp-jaxtrain-src.tar.gz") as tar:
    names = {n.removeprefix("./") for n in tar.getnames()}
  assert {"pyproject.toml", "jaxtrain/__init__.py", "new file.py", ".gitignore"} <= names
  assert not any(n.startswith((".git/", "build")) or n == "gone.py" for n in names), names
  assert_ssh_all(ssh)
  assert "'jax[tpu]==0.10.2'" in remote_command(ssh)


def fake_worker_home(tmp: pathlib.Path) -> pathlib.Path:
  """A $HOME with a fake `uv` on the path the setup command adds."""
  home = tmp / "home"
  (home / ".local" / "bin").mkdir(parents=True)
  uv = home / ".local" / "bin" / "uv"
  uv.write_text(r"""#!/usr/bin/env bash
printf '%s\0' "$@" >> "$HOME/uv-calls"; printf '\n' >> "$HOME/uv-calls"
if [ "$1" = venv ]; then
  d=${!#}; mkdir -p "$d/bin"
  printf '#!/bin/sh\necho "fake python $*"\n' > "$d/bin/python"; chmod +x "$d/bin/python"
fi
""")
  uv.chmod(0o755)
  return home


def test_setup_remote_command_unpacks_and_installs_on_a_worker(gcloud, tmp_path):
  repo = make_checkout(tmp_path)
  gcloud.run("setup.sh", *TPU_ARGS, f"--local-dir={repo}", "--python=3.12")
  home = fake_worker_home(tmp_path)
  shutil.copy(gcloud.dir / "scp-jaxtrain-src.tar.gz", home / "jaxtrain-src.tar.gz")
  (home / "jaxtrain").mkdir()
  (home / "jaxtrain" / "stale.py").write_text("")  # from an earlier setup: removed
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}
  cmd = remote_command(gcloud.calls()[1])
  proc = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert (home / "jaxtrain" / "new file.py").exists()
  assert not (home / "jaxtrain" / "stale.py").exists()
  assert not (home / "jaxtrain-src.tar.gz").exists()
  calls = [c.split("\0")[:-1] for c in (home / "uv-calls").read_text().split("\n") if c]
  assert calls[0] == ["venv", "--quiet", "--python", "3.12", f"{home}/jaxtrain-venv"]
  assert calls[1] == ["pip", "install", "--quiet", "--python",
                      f"{home}/jaxtrain-venv/bin/python", "-e", f"{home}/jaxtrain[tpu]",
                      "jax[tpu]"]
  assert "jaxtrain installed" in proc.stdout


def test_setup_from_git(gcloud):
  gcloud.run("setup.sh", *TPU_ARGS, "--repo", "https://github.com/me/jaxtrain.git",
             "--ref=my-branch", "--remote-dir=src/jt", "--venv=~/venvs/jt")
  (ssh,) = gcloud.calls()
  assert_ssh_all(ssh)
  words = shlex.split(remote_command(ssh))
  assert "https://github.com/me/jaxtrain.git" in words
  assert "my-branch;" in words
  assert "$HOME/src/jt/.git" in words and "$HOME/venvs/jt/bin/python" in words


@pytest.mark.parametrize("args,message", [
    (["--repo=u", "--local-dir=."], "mutually exclusive"),
    (["--ref=x"], "--ref needs --repo"),
    (["--remote-dir=/abs"], "--remote-dir=/abs"),
    (["--remote-dir=."], "--remote-dir=."),
    (["--venv=a/../b"], "--venv=a/../b"),
    (["--local-dir=/nonexistent"], "--local-dir=/nonexistent"),
])
def test_setup_rejects_bad_flags(gcloud, args, message):
  proc = gcloud.run("setup.sh", *TPU_ARGS, *args, check_rc=2)
  assert message in proc.stderr
  assert gcloud.calls() == []


# --- run.sh ------------------------------------------------------------------------

RUN_ARGS = [*TPU_ARGS, "--config=experiments/resnet50_imagenet_lars.py",
            "--workdir=gs://bucket/runs/r50/"]


def test_run_starts_on_all_workers_with_overrides_quoted(gcloud):
  gcloud.run("run.sh", *RUN_ARGS, "--env=TFDS_DATA_DIR=gs://bucket/tfds", "--",
             *TRICKY_OVERRIDES)
  (call,) = gcloud.calls()
  assert_ssh_all(call)
  words = shlex.split(remote_command(call))
  start = words.index("jaxtrain")
  end = words.index(">>", start)
  assert words[start - 2:end] == [
      "env", "TFDS_DATA_DIR=gs://bucket/tfds", "jaxtrain", "train",
      "--config=experiments/resnet50_imagenet_lars.py", "--workdir=gs://bucket/runs/r50/",
      *TRICKY_OVERRIDES]
  assert words[end + 1] == "$HOME/jaxtrain-logs/r50.log"  # run name from the workdir


@pytest.mark.parametrize("workdir", ["studies/digits", "gs://bucket/studies/digits"])
@pytest.mark.parametrize("command,extra", [
    ("sweep", []),
    ("lr-find", ["--min_lr=1e-4", "--max_lr=3", "--num_steps=50", "--smoothing=0.9",
                 "--divergence_factor=4", "--optimizer=it's lars (base)"]),
])
def test_run_starts_sweep_and_lr_find_on_all_workers(gcloud, command, extra, workdir):
  """A local or gs:// workdir (process 0 writes the results through etils.epath),
  without the warning `train` gives for a local one."""
  proc = gcloud.run("run.sh", *TPU_ARGS, f"--command={command}",
                    "--config=experiments/scaling/digits_cnn.py", f"--workdir={workdir}",
                    "--", *extra, *TRICKY_OVERRIDES)
  assert "not on gs://" not in proc.stderr
  (call,) = gcloud.calls()
  assert_ssh_all(call)
  words = shlex.split(remote_command(call))
  start = words.index("jaxtrain")
  end = words.index(">>", start)
  assert words[start:end] == [
      "jaxtrain", command, "--config=experiments/scaling/digits_cnn.py",
      f"--workdir={workdir}", *extra, *TRICKY_OVERRIDES]
  assert words[end + 1] == "$HOME/jaxtrain-logs/digits.log"


def test_run_lr_find_flags_are_the_cli_flags():
  """The flags run.sh lets through after '--' for lr-find are those of
  `jaxtrain lr-find` (besides --config, --workdir and the multi-host flags, which on
  Cloud TPU are detected, as for train)."""
  import argparse  # pylint: disable=g-import-not-at-top
  from jaxtrain import cli  # pylint: disable=g-import-not-at-top
  from jaxtrain.commands import flags as flags_lib  # pylint: disable=g-import-not-at-top
  (lr_find,) = [c for c in cli._commands() if c.name == "lr-find"]  # pylint: disable=protected-access

  def flags(add):
    parser = argparse.ArgumentParser()
    add(parser)
    return {o[2:] for a in parser._actions for o in a.option_strings  # pylint: disable=protected-access
            if o.startswith("--") and o not in ("--help", "--workdir")}
  cli_flags = flags(lr_find.add_flags) - flags(flags_lib.add_multihost_flags)
  assert "num_processes" in flags(lr_find.add_flags)
  listed = re.search(r"^LR_FIND_FLAGS=\((.*)\)$", (TPU / "run.sh").read_text(), re.M)
  assert set(listed.group(1).split()) == cli_flags


def fake_jaxtrain_home(tmp: pathlib.Path) -> pathlib.Path:
  """A $HOME with ~/jaxtrain and a fake jaxtrain in ~/jaxtrain-venv/bin that writes its
  argv and environment to ~/argv and ~/env, then runs for ~/ticks tenths of a second
  (SIGTERM stops it)."""
  home = tmp / "home"
  (home / "jaxtrain").mkdir(parents=True)
  bin_dir = home / "jaxtrain-venv" / "bin"
  bin_dir.mkdir(parents=True)
  exe = bin_dir / "jaxtrain"
  exe.write_text("""#!/usr/bin/env bash
printf '%s\\0' "$@" > "$HOME/argv.tmp" && mv "$HOME/argv.tmp" "$HOME/argv"
{ pwd; echo "TFDS_DATA_DIR=${TFDS_DATA_DIR:-}"; ps -o sid= -p $$; } > "$HOME/env.tmp"
mv "$HOME/env.tmp" "$HOME/env"
trap 'echo "got SIGTERM, checkpointing"; exit 0' TERM
echo "training started"
for _ in $(seq "$(cat "$HOME/ticks")"); do sleep 0.1; done
echo "training done"
""")
  exe.chmod(0o755)
  return home


def wait_for(predicate, timeout=10.0):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie still answers kill -0 until reaped; read its state.
  stat = pathlib.Path(f"/proc/{pid}/stat")
  return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs util-linux setsid")
def test_run_remote_command_on_a_worker_detaches_logs_and_stops(gcloud, tmp_path):
  """Run the recorded --command as a worker's shell would: every override arrives as
  one argument, the job outlives the ssh session, --stop sends it SIGTERM."""
  gcloud.run("run.sh", *RUN_ARGS, "--env=TFDS_DATA_DIR=gs://bucket/tfds", "--",
             *TRICKY_OVERRIDES)
  gcloud.run("run.sh", *TPU_ARGS, "--stop")
  launch, stop = map(remote_command, gcloud.calls())
  home = fake_jaxtrain_home(tmp_path)
  (home / "ticks").write_text("300")
  env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
  ssh_session = lambda cmd: subprocess.run(  # noqa: E731
      ["setsid", "bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=20)

  proc = ssh_session(launch)   # returns at once: the job holds no ssh stdio
  assert proc.returncode == 0, proc.stderr
  assert "started run r50" in proc.stdout
  pid = int((home / "jaxtrain-logs" / "r50.pid").read_text())
  try:
    assert wait_for(lambda: (home / "env").exists() and (home / "argv").exists())
    argv = (home / "argv").read_bytes().decode().split("\0")[:-1]
    assert argv == ["train", "--config=experiments/resnet50_imagenet_lars.py",
                    "--workdir=gs://bucket/runs/r50/", *TRICKY_OVERRIDES]
    cwd, tfds, sid = (home / "env").read_text().split("\n")[:3]
    assert cwd == str(home / "jaxtrain")
    assert tfds == "TFDS_DATA_DIR=gs://bucket/tfds"
    assert int(sid) == pid   # own session: a closing ssh session does not take it down

    again = ssh_session(launch)   # one job at a time per worker (the TPU is exclusive)
    assert again.returncode == 1 and "still running" in again.stderr

    proc = ssh_session(stop)
    assert "sent SIGTERM" in proc.stdout
    assert wait_for(lambda: not pid_alive(pid))
  finally:
    if pid_alive(pid):
      os.kill(pid, signal.SIGKILL)
  log = (home / "jaxtrain-logs" / "r50.log").read_text()
  assert log.startswith("=== ") and "start run r50" in log
  assert "training started" in log and "got SIGTERM" in log
  # (Here PID 1 may not reap the orphan; on a worker systemd does: use a reaped pid.)
  dead = subprocess.Popen(["true"])
  dead.wait()
  (home / "jaxtrain-logs" / "r50.pid").write_text(f"{dead.pid}\n")
  assert "no running jaxtrain run" in ssh_session(stop).stdout
  (home / "ticks").write_text("1")
  assert ssh_session(launch).returncode == 0   # a stopped run starts again (resumes)
  assert wait_for(lambda: "training done" in (home / "jaxtrain-logs" / "r50.log").read_text())
  log = (home / "jaxtrain-logs" / "r50.log").read_text()
  assert log.count("start run r50") == 2 and "got SIGTERM" in log   # appended, not replaced


def test_run_tail_streams_the_log_with_worker_prefix(gcloud, tmp_path):
  gcloud.run("run.sh", *TPU_ARGS, "--tail", "--lines=2")
  gcloud.run("run.sh", *TPU_ARGS, "--tail", "--run=r50", "--worker=3")
  tail_newest, tail_r50 = gcloud.calls()
  assert_ssh_all(tail_newest)
  assert "--worker=3" in tail_r50 and "--worker=all" not in tail_r50
  home = tmp_path / "home"
  logs = home / "jaxtrain-logs"
  logs.mkdir(parents=True)
  (logs / "old.log").write_text("old\n")
  time.sleep(0.05)
  (logs / "r50.log").write_text("line 1\nline 2\nline 3\n")
  dead = subprocess.Popen(["true"])
  dead.wait()
  (logs / "r50.pid").write_text(f"{dead.pid}\n")   # finished run: tail ends by itself
  env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  proc = subprocess.run(["bash", "-c", remote_command(tail_newest)], env=env,
                        capture_output=True, text=True, timeout=20)
  assert proc.stdout.splitlines() == [f"[{host}] line 2", f"[{host}] line 3"]


def test_run_derives_the_run_name_and_warns_on_local_workdir(gcloud):
  proc = gcloud.run("run.sh", *TPU_ARGS, "--config=c.py", "--workdir=/tmp/x/my.run")
  assert "not on gs://" in proc.stderr
  assert "jaxtrain-logs/my.run.log" in remote_command(gcloud.calls()[0])


@pytest.mark.parametrize("args,message", [
    (["--", "lr=0.1"], "override 'lr=0.1'"),
    (["--config.optimizer.lr=0.1"], "must come after '--'"),
    (["--worker=0"], "--worker only applies to --tail"),
    (["--tail", "--stop"], "mutually exclusive"),
    (["--tail", "--", "--config.a=1"], "only apply when starting a run"),
    (["--env=1BAD=x"], "--env=1BAD=x"),
    (["--run=a b"], "--run=a b"),
    (["--tail", "--lines=x"], "--lines=x"),
    (["--command=eval"], "--command=eval: expected train, sweep or lr-find"),
    (["--tail", "--command=sweep"], "--command only applies when starting a run"),
    (["--command=sweep", "--workdir=s", "--", "--min_lr=1"], "override '--min_lr=1'"),
    (["--command=lr-find", "--workdir=s", "--", "--max-lr=1"],
     "argument '--max-lr=1' after '--'"),
])
def test_run_rejects_bad_flags(gcloud, args, message):
  proc = gcloud.run("run.sh", *RUN_ARGS, *args, check_rc=2)
  assert message in proc.stderr
  assert gcloud.calls() == []


def test_ssh_and_scp_use_internal_ip_when_asked(gcloud):
  gcloud.run("setup.sh", *TPU_ARGS, "--internal-ip")
  gcloud.run("run.sh", *RUN_ARGS, "--internal-ip")
  calls = gcloud.calls()
  assert len(calls) == 3 and all("--internal-ip" in c for c in calls)


# --- the runbook ---------------------------------------------------------------------

def readme_commands() -> list[list[str]]:
  """Every `tpu/*.sh ...` command in tpu/README.md's code blocks, as words."""
  text = (TPU / "README.md").read_text()
  blocks = text.split("```")[1::2]
  commands = []
  for block in blocks:
    for line in block.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True)
      if words and words[0].startswith("tpu/"):
        commands.append(words)
  return commands


def test_readme_commands_use_the_scripts_real_flags(gcloud):
  commands = readme_commands()
  assert {c[0] for c in commands} == {f"tpu/{s}" for s in SCRIPTS}
  env = {"JAXTRAIN_PROJECT": "my-project", "JAXTRAIN_ZONE": "us-central2-b",
         "JAXTRAIN_TPU": "pod1"}
  for words in commands:
    proc = gcloud.run(words[0].removeprefix("tpu/"), "--dry-run", *words[1:], env=env,
                      check_rc=None)
    assert proc.returncode == 0, (words, proc.stderr)
    assert proc.stdout.strip(), words
  assert gcloud.calls() == []


def runbook_lines(program: str) -> list[list[str]]:
  """Every command of tpu/README.md's code blocks that starts with `program`
  (environment assignments before it dropped), as words."""
  text = (TPU / "README.md").read_text()
  found = []
  for block in text.split("```")[1::2]:
    for line in block.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True)
      while words and re.fullmatch(r"\w+=.*", words[0]):
        words = words[1:]
      if words and words[0] == program:
        found.append(words)
  return found


def _flag(words: list[str], name: str) -> str | None:
  values = [w.split("=", 1)[1] for w in words if w.startswith(name + "=")]
  return values[-1] if values else None


def test_runbook_compiles_for_the_slice_it_creates_with_the_batch_it_runs():
  (compile_,) = [w for w in runbook_lines("jaxtrain") if w[1] == "compile"]
  version, dims = _flag(compile_, "--topology").split(":")
  chips = 1
  for d in dims.split("x"):
    chips *= int(d)
  # v4 and v5p accelerator types count TensorCores, two per chip.
  accelerator = f"{version}-{2 * chips}"
  creates = [w for w in readme_commands() if w[0] == "tpu/create.sh"]
  assert creates and {_flag(w, "--accelerator-type") for w in creates} == {accelerator}
  for field in ("--config.train.batch_size", "--config.train.eval_batch_size"):
    batch = _flag(compile_, field)
    runs = [w for w in readme_commands() if w[0] == "tpu/run.sh" and _flag(w, field)]
    assert batch and len(runs) >= 3
    assert {_flag(w, field) for w in runs} == {batch}, field


def test_runbook_time_and_cost_follow_from_the_compile_figures():
  text = " ".join((TPU / "README.md").read_text().split())
  per_device, in_all, per_example = (float(x) for x in re.search(
      r"FLOPs per step ([\d.e+]+) per device, ([\d.e+]+) in all \(([\d.]+) GFLOP "
      r"per example\)", text).groups())
  chips, batch = 16, 512
  assert in_all == pytest.approx(per_device * chips, rel=1e-3)
  assert in_all == pytest.approx(per_example * 1e9 * batch, rel=1e-3)
  peak = float(re.search(r"peak, (\d+) TFLOP/s in bfloat16", text).group(1)) * 1e12
  mfu = float(re.search(r"assumed here to be (\d+)%", text).group(1)) / 100
  price = float(re.search(r"\$([\d.]+) per chip-hour", text).group(1))
  seconds = per_device / (peak * mfu)
  assert f"**{seconds * 1e3:.1f} ms per step**" in text
  assert f"about {round(batch / seconds, -3):,.0f} images/s" in text
  assert f"${price * chips:.2f} an hour for {chips} chips" in text
  per_step = seconds * price * chips / 3600
  assert f"about **${per_step:.5f} per step**" in text
  steps = 1_281_167 / batch  # one ImageNet epoch
  assert f"${steps * per_step:.2f} per ImageNet epoch ({steps:,.0f} steps of {batch})" \
      in text
  # The published run: 76.3% in 2.2 minutes, 2,983 steps of 32,768 on 1,024 v3 chips.
  published = per_example * 1e9 * 32768 * 2983 / (2.2 * 60) / (1024 * 123e12)
  assert f"correspond to about {published * 100:.0f}%" in text


def test_runbook_smoke_test_config_builds(tmp_path):
  """The smoke test's overrides give a config that validates and builds (mesh,
  synthetic source, transforms, model shapes), here on 8 CPU devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import config as config_lib, runner  # pylint: disable=g-import-not-at-top
  (smoke,) = [w for w in readme_commands()
              if w[0] == "tpu/run.sh" and "--config.data.source=synthetic" in w]
  overrides = [w[len("--config."):] for w in smoke[smoke.index("--") + 1:]]
  config = config_lib.load(str(ROOT / _flag(smoke, "--config")))
  config_lib.apply_overrides(config, overrides)
  exp = runner.build(config, jax.devices()[:8])
  assert exp.total_steps == 200 and exp.train_source.image_shape == (224, 224, 3)


@pytest.mark.slow
def test_runbook_compile_command_gives_the_figures_it_quotes():
  pytest.importorskip("libtpu")
  (words,) = [w for w in runbook_lines("jaxtrain") if w[1] == "compile"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-m", "jaxtrain.cli", *words[1:]], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(x for x in proc.stdout.splitlines() if x.startswith("FLOPs per step"))
  assert " ".join(line.split()) in " ".join((TPU / "README.md").read_text().split())


def test_run_on_a_worker_without_setup_says_so(gcloud, tmp_path):
  gcloud.run("run.sh", *RUN_ARGS)
  home = tmp_path / "home"
  home.mkdir()
  proc = subprocess.run(["bash", "-c", remote_command(gcloud.calls()[0])],
                        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                        capture_output=True, text=True, timeout=20)
  assert proc.returncode == 1
  assert "run setup.sh first" in proc.stderr
