"""Tests of the GPU launch kits in gpu/: the SLURM batch script against fake
`sbatch`/`srun`/`scancel`/`scontrol` that record their arguments, the JobSet
manifest parsed as YAML, and the runbook's own command lines (gpu/README.md) run
as written."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
GPU = ROOT / "gpu"
RUNBOOK = (GPU / "README.md").read_text()
TRICKY = ["--config.data.name=it's \"quoted\" $(echo no) `no` * ;",
          "--config.sharding.rules=[('batch', ('data', 'fsdp'))]"]

FAKES = {
    # srun: records its arguments; runs until SIGTERM (then exit 143, as jaxtrain
    # does after its checkpoint) or FAKE_SRUN_SECONDS, then exits FAKE_SRUN_RC.
    "srun": r"""#!/usr/bin/env bash
printf '%s\0' "$@" > "$FAKE_DIR/srun.args"
echo $$ > "$FAKE_DIR/srun.pid"
trap 'echo TERM > "$FAKE_DIR/srun.term"; exit 143' TERM
for ((i = 0; i < ${FAKE_SRUN_SECONDS:-30} * 10; i++)); do sleep 0.1; done
exit "${FAKE_SRUN_RC:-0}"
""",
    # scancel --signal=TERM JOB: SLURM would signal the step's tasks.
    "scancel": r"""#!/usr/bin/env bash
printf '%s\0' "$@" > "$FAKE_DIR/scancel.args"
kill -TERM "$(cat "$FAKE_DIR/srun.pid")"
""",
    "scontrol": r"""#!/usr/bin/env bash
printf '%s\0' "$@" > "$FAKE_DIR/scontrol.args"
""",
    # sbatch: runs the script as the allocation would, in dry-run mode.
    "sbatch": r"""#!/usr/bin/env bash
while [[ $1 == -* ]]; do
  case $1 in
    --nodes=*) export SLURM_JOB_NUM_NODES=${1#*=} ;;
    --gpus-per-node=*) export SLURM_GPUS_ON_NODE=${1#*=} ;;
  esac
  shift
done
script=$1; shift
export SLURM_JOB_ID=4242 SLURM_CPUS_ON_NODE=96
exec bash "$script" --dry-run "$@"
""",
}


@pytest.fixture
def fake(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in FAKES.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_DIR=str(tmp_path))
  return env


def _recorded(tmp_path, name):
  return (tmp_path / f"{name}.args").read_bytes().decode().split("\0")[:-1]


def _runbook_commands(prefix: str) -> list[str]:
  """The runbook's shell lines that start with `prefix` (inside ``` blocks)."""
  blocks = re.findall(r"```bash\n(.*?)```", RUNBOOK, re.S)
  return [line for b in blocks for line in b.splitlines() if line.startswith(prefix)]


def _slurm(env, *args, rc=0):
  proc = subprocess.run([str(GPU / "slurm.sh"), *args], env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == rc, (proc.stdout, proc.stderr)
  return proc


# --- slurm.sh ---------------------------------------------------------------------

def test_help_lists_every_flag(fake):
  for flag in ("--help", "-h"):
    out = _slurm(fake, flag).stdout
    assert out.startswith("Usage: sbatch ")
    for name in ("--config", "--workdir", "--command", "--tasks", "--nodes",
                 "--gpus-per-node", "--cpus-per-task", "--python", "--env",
                 "--dry-run", "--signal=B:USR1@300", "--requeue"):
      assert name in out, name
  out = subprocess.run([sys.executable, str(GPU / "jobset.py"), "--help"],
                       capture_output=True, text=True, check=True).stdout
  for name in ("--name", "--image", "--nodes", "--gpus-per-node", "--config",
               "--workdir", "--port", "--max-restarts", "--grace-seconds", "--volume"):
    assert name in out, name


@pytest.mark.parametrize("args,message", [
    (["--workdir=w", "--gpus-per-node=8"], "missing required flag --config"),
    (["--config=c", "--gpus-per-node=8"], "missing required flag --workdir"),
    (["--config=c", "--workdir=w"], "--gpus-per-node=''"),
    (["--config=c", "--workdir=w", "--gpus-per-node=8", "--tasks=per-core"],
     "--tasks=per-core"),
    (["--config=c", "--workdir=w", "--gpus-per-node=8", "--bogus"],
     "unknown flag: --bogus"),
    (["--config", "--workdir=w"], "--config needs a value"),
])
def test_bad_flags_exit_2_naming_them(fake, args, message):
  proc = _slurm(fake, "--dry-run", *args, rc=2)
  assert message in proc.stderr and proc.stdout == ""


def test_runbook_sbatch_lines_start_the_right_srun_steps(fake):
  lines = _runbook_commands("sbatch ")
  assert len(lines) == 2
  outs = [subprocess.run(line, shell=True, env=fake, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout for line in lines]
  assert [shlex.split(o) for o in outs] == [
      ["srun", "--nodes=2", "--ntasks-per-node=8", "--kill-on-bad-exit=1",
       "--cpus-per-task=12", "python3", "-m", "jaxtrain.cli", "train",
       "--config=experiments/resnet50_imagenet_lars.py", "--workdir=/shared/runs/r50",
       "--config.train.batch_size=4096"],
      ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
       "--cpus-per-task=96", "python3", "-m", "jaxtrain.cli", "train",
       "--config=experiments/digits_cnn.py", "--workdir=/shared/runs/smoke"]]
  (dry,) = _runbook_commands("gpu/slurm.sh --dry-run")
  out = subprocess.run(dry, shell=True, env=fake, cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert shlex.split(out)[:3] == ["srun", "--nodes=2", "--ntasks-per-node=8"]


def test_dry_run_line_survives_copy_paste_into_bash(fake):
  out = _slurm(fake, "--dry-run", "--gpus-per-node=4", "--config=c.py",
               "--workdir=/w", "--env=NCCL_DEBUG=INFO", "--", *TRICKY).stdout
  words = subprocess.run(["bash", "-c", "printf '%s\\0' " + out.strip()],
                         capture_output=True, text=True, check=True).stdout
  assert words.split("\0")[:-1] == [
      "srun", "--nodes=1", "--ntasks-per-node=4", "--kill-on-bad-exit=1", "env",
      "NCCL_DEBUG=INFO", "python3", "-m", "jaxtrain.cli", "train", "--config=c.py",
      "--workdir=/w", *TRICKY]


def test_near_the_time_limit_jaxtrain_gets_sigterm_and_the_job_is_requeued(
    fake, tmp_path):
  env = dict(fake, SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="8")
  proc = subprocess.Popen([str(GPU / "slurm.sh"), "--config=c.py", "--workdir=/w",
                           "--", *TRICKY], env=env, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 20
  while not (tmp_path / "srun.pid").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 delivers
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 143, err  # jaxtrain's: stopped by SIGTERM, saved
  assert (tmp_path / "srun.term").exists()
  assert _recorded(tmp_path, "scancel") == ["--signal=TERM", "77"]
  assert _recorded(tmp_path, "scontrol") == ["requeue", "77"]
  assert _recorded(tmp_path, "srun")[-4:-2] == ["--config=c.py", "--workdir=/w"]
  assert _recorded(tmp_path, "srun")[-2:] == TRICKY


@pytest.mark.parametrize("rc", [0, 3])
def test_a_finished_or_failed_step_is_not_requeued(fake, tmp_path, rc):
  env = dict(fake, SLURM_JOB_ID="78", SLURM_GPUS_ON_NODE="8", FAKE_SRUN_SECONDS="0",
             FAKE_SRUN_RC=str(rc))
  _slurm(env, "--config=c.py", "--workdir=/w", rc=rc)
  assert not (tmp_path / "scontrol.args").exists()


def test_shellcheck_passes(shellcheck):
  proc = subprocess.run([shellcheck, "-x", str(GPU / "slurm.sh")],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# --- jobset.py ----------------------------------------------------------------------

def _runbook_manifest(tmp_path) -> list[dict]:
  (line,) = _runbook_commands("python3 gpu/jobset.py")
  (tmp_path / "gpu").symlink_to(GPU)
  subprocess.run(line, shell=True, cwd=tmp_path, check=True)
  target = line.rsplit(">", 1)[1].strip()
  return list(yaml.safe_load_all((tmp_path / target).read_text()))


def test_runbook_manifest_is_a_headless_service_and_an_indexed_jobset(tmp_path):
  service, jobset = _runbook_manifest(tmp_path)
  name = "r50"
  assert service["kind"] == "Service" and service["metadata"]["name"] == name
  assert service["spec"]["clusterIP"] == "None"
  assert service["spec"]["publishNotReadyAddresses"] is True
  assert service["spec"]["selector"] == {"jobset.sigs.k8s.io/jobset-name": name}
  assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
  assert jobset["kind"] == "JobSet" and jobset["metadata"]["name"] == name
  spec = jobset["spec"]
  assert spec["network"] == {"enableDNSHostnames": True, "subdomain": name,
                             "publishNotReadyAddresses": True}
  assert spec["failurePolicy"] == {"maxRestarts": 10}
  (rjob,) = spec["replicatedJobs"]
  assert rjob["replicas"] == 1
  job = rjob["template"]["spec"]
  assert (job["parallelism"], job["completions"], job["completionMode"],
          job["backoffLimit"]) == (2, 2, "Indexed", 0)
  pod = job["template"]["spec"]
  assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 600
  (c,) = pod["containers"]
  assert c["image"] == "REGISTRY/jaxtrain:latest"
  assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}
  env = {e["name"]: e["value"] for e in c["env"]}
  # Pod 0 of Job 0: <jobset>-<replicatedJob>-<job index>-<pod index>.<subdomain>,
  # the name jax/_src/clusters/k8s_cluster.py derives for JobSets too.
  assert env["JAX_COORDINATOR_ADDRESS"] == f"{name}-{rjob['name']}-0-0.{name}:55527"
  assert c["command"][:2] == ["bash", "-c"]
  assert c["command"][3:] == [
      "jaxtrain", "python3", "-m", "jaxtrain.cli", "train",
      "--config=experiments/resnet50_imagenet_lars.py",
      "--workdir=gs://BUCKET/runs/r50", "--num_processes=2",
      "--config.train.batch_size=4096"]
  assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def _manifest(*args) -> list[dict]:
  out = subprocess.run([sys.executable, str(GPU / "jobset.py"), *args],
                       capture_output=True, text=True, check=True).stdout
  return list(yaml.safe_load_all(out))


def test_manifest_arguments_round_trip_and_kubernetes_expansion_is_escaped():
  _, jobset = _manifest("--name=t1", "--image=i", "--config=c.py", "--workdir=/w",
                        "--nodes=4", "--gpus-per-node=4", "--namespace=ml",
                        "--volume=shared:/mnt/s", "--env=A=x=1",
                        "--node-selector=gpu=h200", "--", *TRICKY)
  job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
  pod = job["template"]["spec"]
  c = pod["containers"][0]
  # Kubernetes turns $$( into $( when it expands the command.
  assert [w.replace("$$(", "$(") for w in c["command"][-2:]] == TRICKY
  assert jobset["metadata"] == {"name": "t1", "namespace": "ml"}
  assert job["parallelism"] == 4 and c["resources"]["limits"]["nvidia.com/gpu"] == 4
  assert "--num_processes=4" in c["command"]
  assert {"name": "A", "value": "x=1"} in c["env"]
  assert pod["nodeSelector"] == {"gpu": "h200"}
  assert {"name": "workdir", "persistentVolumeClaim": {"claimName": "shared"}} in (
      pod["volumes"])


@pytest.mark.parametrize("args", [["--name=Bad_Name"], ["--nodes=0"],
                                  ["--env=1A=b"], ["--volume=novolume"]])
def test_bad_manifest_flags_exit_2(args):
  base = {"--name": "ok", "--image": "i", "--config": "c", "--workdir": "w"}
  for a in args:
    base[a.split("=", 1)[0]] = a.split("=", 1)[1]
  proc = subprocess.run([sys.executable, str(GPU / "jobset.py"),
                         *[f"{k}={v}" for k, v in base.items()]],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and args[0].split("=")[0] in proc.stderr


def _entrypoint():
  _, jobset = _manifest("--name=e", "--image=i", "--config=c", "--workdir=w")
  pod = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
  return pod["containers"][0]["command"][:4]


CHILD = """
import pathlib, signal, sys, time
def stop(*_):
    pathlib.Path(sys.argv[1]).write_text("TERM")
    sys.exit(143)  # jaxtrain: checkpoint saved, exit 128 + SIGTERM
signal.signal(signal.SIGTERM, stop)
pathlib.Path(sys.argv[1] + ".up").write_text("up")
time.sleep(float(sys.argv[2]))
sys.exit(int(sys.argv[3]))
"""


def test_pod_entrypoint_forwards_sigterm_and_exits_143_so_the_jobset_restarts(tmp_path):
  flag = tmp_path / "child"
  proc = subprocess.Popen([*_entrypoint(), sys.executable, "-c", CHILD, str(flag),
                           "30", "0"])
  deadline = time.monotonic() + 20
  while not pathlib.Path(f"{flag}.up").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # the kubelet signals the container's process 1
  assert proc.wait(timeout=30) == 143
  assert flag.read_text() == "TERM"
  # Without a signal the program's own status comes through.
  done = subprocess.run([*_entrypoint(), sys.executable, "-c", CHILD, str(flag),
                         "0", "3"], timeout=30)
  assert done.returncode == 3
