"""`.ci/run` runs the README's test command in a clone of its own and touches nothing
outside it."""
import os
import re
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


def test_ci_script_passes_shellcheck(shellcheck):
  proc = subprocess.run([shellcheck, CI], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout
