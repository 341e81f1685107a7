"""Cluster start-up (jaxtrain.parallel.cluster): launchers' variables -> the
arguments of jax.distributed.initialize, and real processes started the way srun,
mpirun and an indexed Kubernetes Job start them.

The layouts' expected GPU ids below are written out by hand from how each
launcher places tasks; the coordinator addresses are checked against JAX's own
cluster classes (jax/_src/clusters), which read the same variables.
"""
import json
import os
import subprocess

import numpy as np
import pytest

import processes

from jaxtrain.errors import ConfigError
from jaxtrain.metrics import TIMING_KEYS
from jaxtrain.parallel import cluster

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")


def _args(coordinator=None, num_processes=None, process_id=None):
  return cluster.Flags(coordinator_address=coordinator,
                       num_processes=num_processes, process_id=process_id)


def slurm_env(procid, localid, nodeid, ntasks, tasks_per_node, gpus_on_node,
              visible, **extra):
  """The variables srun sets for one task (GPU nodes with gres)."""
  env = {"SLURM_JOB_ID": "73421", "SLURM_STEP_NODELIST": "gpu[017-018]",
         "SLURM_NTASKS": str(ntasks), "SLURM_PROCID": str(procid),
         "SLURM_LOCALID": str(localid), "SLURM_NODEID": str(nodeid),
         "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
         "SLURM_GPUS_ON_NODE": str(gpus_on_node),
         "SLURM_STEP_GPUS": ",".join(map(str, range(gpus_on_node))),
         "CUDA_VISIBLE_DEVICES": visible}
  env.update(extra)
  return env


# (name, env, expected local_device_ids): GPU nodes of 8 GPUs.
SLURM_LAYOUTS = [
    ("one task per node sees all 8",
     slurm_env(1, 0, 1, 2, "1(x2)", 8, "0,1,2,3,4,5,6,7"), (0, 1, 2, 3, 4, 5, 6, 7)),
    ("8 tasks per node, unbound: task 5 takes GPU 5",
     slurm_env(13, 5, 1, 16, "8(x2)", 8, "0,1,2,3,4,5,6,7"), (5,)),
    ("8 tasks per node, --gpus-per-task=1: each sees its own as device 0",
     slurm_env(13, 5, 1, 16, "8(x2)", 8, "5"), (0,)),
    ("2 tasks per node, unbound: task 1 takes GPUs 4-7",
     slurm_env(3, 1, 1, 4, "2(x2)", 8, "0,1,2,3,4,5,6,7"), (4, 5, 6, 7)),
    ("2 tasks per node, --gpus-per-task=4",
     slurm_env(3, 1, 1, 4, "2(x2)", 8, "4,5,6,7"), (0, 1, 2, 3)),
    ("no gres variables but CUDA_VISIBLE_DEVICES: 4 tasks share 8",
     {k: v for k, v in slurm_env(2, 2, 0, 4, "4", 8, "0,1,2,3,4,5,6,7").items()
      if k not in ("SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS")}, (4, 5)),
    ("JAX_LOCAL_DEVICE_IDS is taken as asked",
     slurm_env(0, 0, 0, 2, "1(x2)", 8, "0", JAX_LOCAL_DEVICE_IDS="0"), (0,)),
]


@pytest.mark.parametrize("name,env,ids", SLURM_LAYOUTS, ids=[s[0] for s in SLURM_LAYOUTS])
def test_slurm_layouts_use_every_gpu_of_the_node(name, env, ids):
  launch = cluster.plan(_args(), env, node_gpus=lambda: None)
  assert launch.kind == "slurm"
  assert launch.local_device_ids == ids, name
  assert launch.num_processes == int(env["SLURM_NTASKS"])
  assert launch.process_id == int(env["SLURM_PROCID"])


@pytest.mark.parametrize("env,field", [
    # One task per node bound to one GPU: 7 of 8 idle.
    (slurm_env(0, 0, 0, 2, "1(x2)", 8, "0"), "SLURM_GPUS_ON_NODE"),
    # 3 tasks cannot split 8 GPUs.
    (slurm_env(0, 0, 0, 6, "3(x2)", 8, "0,1,2,3,4,5,6,7"), "SLURM_STEP_TASKS_PER_NODE"),
    # 2 tasks bound to 2 GPUs each on a node of 8: 4 idle.
    (slurm_env(0, 0, 0, 4, "2(x2)", 8, "0,1"), "SLURM_GPUS_ON_NODE"),
])
def test_slurm_layouts_that_drop_gpus_are_refused_naming_the_variables(env, field):
  with pytest.raises(ConfigError) as e:
    cluster.plan(_args(), env, node_gpus=lambda: None)
  assert e.value.field == field
  for name in ("SLURM_LOCALID", "CUDA_VISIBLE_DEVICES", "srun"):
    assert name in str(e.value)


def test_one_task_per_node_without_gpu_variables_uses_the_drivers_count():
  env = slurm_env(0, 0, 0, 4, "2(x2)", 8, "")
  for k in ("SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
    del env[k]
  assert cluster.plan(_args(), env, node_gpus=lambda: 8).local_device_ids == (
      0, 1, 2, 3)


def test_coordinators_are_the_ones_jax_would_pick(monkeypatch):
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
  for nodelist in ("gpu[017-018]", "node001,host2", "a100-[3,7-9]x", "solo"):
    env = slurm_env(0, 0, 0, 2, "1(x2)", 8, "0,1,2,3,4,5,6,7",
                    SLURM_STEP_NODELIST=nodelist)
    for k, v in env.items():
      monkeypatch.setenv(k, v)
    expected = clusters.SlurmCluster.get_coordinator_address(None, None)
    assert cluster.plan(_args(), env).coordinator_address == expected
  uri = "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"
  env = {"OMPI_MCA_orte_hnp_uri": uri, "OMPI_COMM_WORLD_SIZE": "2",
         "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
         "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", uri)
  expected = clusters.OmpiCluster.get_coordinator_address(None, None)
  assert cluster.plan(_args(), env).coordinator_address == expected


def test_flags_and_jax_variables_override_the_launcher():
  env = slurm_env(1, 0, 1, 2, "1(x2)", 8, "0,1,2,3,4,5,6,7", JAX_COORDINATOR_PORT="999")
  assert cluster.plan(_args(), env).coordinator_address == "gpu017:999"
  env["JAX_COORDINATOR_ADDRESS"] = "head:1"
  assert cluster.plan(_args(), env).coordinator_address == "head:1"
  launch = cluster.plan(_args("x:2", 3, 2), env)
  assert (launch.coordinator_address, launch.num_processes, launch.process_id) == (
      "x:2", 3, 2)
  assert launch.local_device_ids == tuple(range(8))  # still the launcher's layout


def test_single_process_and_incomplete_flags():
  assert cluster.plan(_args(), {}) is None
  assert cluster.plan(_args(), slurm_env(0, 0, 0, 1, "1", 8, "0,1")) is None
  with pytest.raises(ConfigError) as e:
    cluster.plan(_args(num_processes=2), {})
  assert e.value.field == "--coordinator_address"
  ompi5 = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}
  with pytest.raises(ConfigError, match="Open MPI 5"):
    cluster.plan(_args(), ompi5)


def test_kubernetes_needs_count_and_coordinator_without_the_api_client(monkeypatch):
  env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3"}
  monkeypatch.setattr(cluster.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ConfigError) as e:
    cluster.plan(_args(), env)
  assert e.value.field == "--num_processes"
  env["JAX_COORDINATOR_ADDRESS"] = "js-w-0-0.js:1234"
  launch = cluster.plan(_args(num_processes=4), env)
  assert (launch.kind, launch.coordinator_address, launch.num_processes,
          launch.process_id, launch.local_device_ids) == (
              "kubernetes", "js-w-0-0.js:1234", 4, 3, None)


def test_tasks_per_node_and_first_host_parse_slurm_forms():
  assert [cluster.tasks_per_node("2(x3),1", i) for i in range(4)] == [2, 2, 2, 1]
  assert cluster.tasks_per_node("8", 0) == 8
  assert cluster.first_host("node[003-005,9],gpu1") == "node003"
  assert cluster.first_host("gpu1,gpu2") == "gpu1"


# --- real processes on 127.0.0.1 -----------------------------------------------

FLAGS = ["--config.train.num_steps=12", "--config.train.num_epochs=0",
         "--config.train.batch_size=64", "--config.train.log_every=1",
         "--config.train.eval_every=0", "--config.checkpoint.every=0",
         "--config.optimizer.schedule.warmup_steps=4"]
LAUNCHER_VARS = ("SLURM_", "OMPI_", "JOB_COMPLETION_INDEX", "KUBERNETES_",
                 "JAX_COORDINATOR", "JAX_LOCAL_DEVICE_IDS", "CUDA_VISIBLE_DEVICES",
                 "TPU_WORKER_HOSTNAMES")


def _cmd(workdir, *extra):
  return processes.jaxtrain_cmd("train", f"--config={EXPERIMENT}",
                                f"--workdir={workdir}", *FLAGS, *extra)


def _env(devices, **launcher):
  env = {k: v for k, v in processes.cpu_env(devices).items()
         if not k.startswith(LAUNCHER_VARS)}
  env.update(launcher)
  return env


def _log(workdir):
  """Per step: the logged numbers, without the timings."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """1 process x 8 devices, and 2 processes x 4 devices started with flags."""
  one = tmp_path_factory.mktemp("one")
  subprocess.run(_cmd(one), env=_env(8), check=True, capture_output=True,
                 timeout=300)
  flags = tmp_path_factory.mktemp("flags")
  port = processes.free_port()
  processes.run_together(
      [_cmd(flags, *processes.multihost_flags(port, 2, i)) for i in range(2)],
      _env(4), timeout=300)
  return _log(one), _log(flags)


def _check_run(reference, workdir, outs, kind, ids):
  one, flags = reference
  for i, out in enumerate(outs):
    assert (f"jaxtrain: {kind} cluster, process {i} of 2: 4 local cpu devices (ids "
            f"{ids[i]}") in out, out[-2000:]
    assert "8 global" in out
  log = _log(workdir)
  assert log == flags  # bit-identical to the same processes started with flags
  assert len(log) == 12
  for a, b in zip(log, one):  # 1 x 8 devices: another reduction order
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


LAUNCHES = {
    # srun -N1 --ntasks-per-node=2 on a node of 8 GPUs, no GPU binding.
    "slurm 2 tasks on 1 node": ("slurm", ["0-3", "4-7"], lambda i, port: dict(
        slurm_env(i, i, 0, 2, "2", 8, "0,1,2,3,4,5,6,7",
                  SLURM_STEP_NODELIST="127.0.0.1", JAX_COORDINATOR_PORT=str(port)))),
    # srun -N2 --ntasks-per-node=1 on nodes of 4 GPUs ("127.0.0.[1-2]").
    "slurm 1 task per node on 2 nodes": ("slurm", ["0-3", "0-3"], lambda i, port: dict(
        slurm_env(i, 0, i, 2, "1(x2)", 4, "0,1,2,3",
                  SLURM_STEP_NODELIST="127.0.0.[1-2]",
                  JAX_COORDINATOR_PORT=str(port)))),
    # mpirun -np 2 on one node of 8 GPUs (Open MPI 4).
    "open mpi": ("ompi", ["0-3", "4-7"], lambda i, port: {
        "OMPI_MCA_orte_hnp_uri": "2213412864.0;tcp://127.0.0.1,10.0.0.5:41235",
        "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": str(i),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(i), "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "JAX_COORDINATOR_PORT": str(port)}),
    # An indexed Job's pods (gpu/jobset.py's manifest): one pod of 4 GPUs per node.
    "kubernetes indexed job": ("kubernetes", ["0-3", "0-3"], lambda i, port: {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1", "JOB_COMPLETION_INDEX": str(i),
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3"}),
}


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_launcher_processes_match_explicit_flags_and_one_process(
    reference, tmp_path, launch):
  kind, ids, variables = LAUNCHES[launch]
  port = processes.free_port()
  extra = ["--num_processes=2"] if kind == "kubernetes" else []  # as the manifest
  # Each process is given 8 CPU devices; the layout must cut them to its 4.
  outs = processes.run_together([_cmd(tmp_path, *extra)] * 2,
                                [_env(8, **variables(i, port)) for i in range(2)],
                                timeout=300)
  _check_run(reference, tmp_path, outs, kind, ids)


def test_a_layout_that_drops_gpus_exits_2_naming_the_variables(tmp_path):
  env = _env(8, **slurm_env(0, 0, 0, 2, "1(x2)", 8, "0",
                            SLURM_STEP_NODELIST="127.0.0.1"))
  proc = subprocess.run(_cmd(tmp_path), env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr
  (line,) = proc.stderr.strip().splitlines()
  for name in ("SLURM_GPUS_ON_NODE", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE",
               "CUDA_VISIBLE_DEVICES", "srun --ntasks-per-node"):
    assert name in line, line
  assert not os.path.exists(tmp_path / "checkpoints")
