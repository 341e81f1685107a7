"""`.ci/run` runs the README's test command in a clone of its own and touches nothing
outside it."""
import os
import re
import shutil
import subprocess


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CI = os.path.join(ROOT, ".ci", "run")


def _readme_test_command():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  block = text.split("Run the test suite:", 1)[1]
  return re.search(r"```bash\n(.*?)\n", block).group(1)


def _status():
  return subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT,
                        capture_output=True, text=True, check=True).stdout


def test_ci_runs_the_readme_command_in_a_temporary_clone_it_removes(tmp_path):
  before = _status()
  env = dict(os.environ, TMPDIR=str(tmp_path))
  proc = subprocess.run(["bash", CI, "--dry-run"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == _readme_test_command() + "\n"
  clone = re.search(r"^\+ \(in (\S+)\) ", proc.stderr, re.M).group(1)
  assert clone.startswith(str(tmp_path))  # a clone, not this checkout
  assert os.listdir(tmp_path) == []  # removed at the end
  assert _status() == before  # this checkout: nothing created, changed or deleted


def _repo_with_test_command(path, command):
  """A throwaway git repository holding this `.ci/run` and a README whose test
  command is `command`."""
  os.makedirs(os.path.join(path, ".ci"))
  shutil.copy(CI, os.path.join(path, ".ci", "run"))
  with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as f:
    f.write(f"Run the test suite:\n\n```bash\n{command}\n```\n")
  git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com"]
  for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "x"]):
    subprocess.run(git + args, cwd=path, check=True, capture_output=True)
  return os.path.join(path, ".ci", "run")


def test_ci_exits_with_the_test_commands_status_and_reports_time_and_load(
    tmp_path):
  # A failing suite must fail CI: the status printed and returned is the
  # command's own, not the timing line's.
  ci = _repo_with_test_command(str(tmp_path / "repo"), "echo ran; exit 3")
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  proc = subprocess.run(["bash", ci], env=dict(os.environ, TMPDIR=str(scratch)),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 3, proc.stderr
  assert proc.stdout == "ran\n"
  assert re.search(r"^\+ \d+ cores, load average \S+ \S+ \S+ at ", proc.stderr,
                   re.M), proc.stderr
  assert re.search(r"^\+ exit status 3 after \d+ s, load average ", proc.stderr,
                   re.M), proc.stderr
  assert os.listdir(scratch) == []  # the clone is removed after a failure too


def test_ci_script_passes_shellcheck(shellcheck):
  proc = subprocess.run([shellcheck, CI], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout
