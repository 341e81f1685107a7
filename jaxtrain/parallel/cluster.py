"""How this process joins a multi-process run: which launcher started it, and
`jax.distributed.initialize` with every argument spelled out.

Launchers, recognized by the variables JAX's own cluster classes read
(jax/_src/clusters/*.py):

  slurm       `srun`: SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID
              and SLURM_LOCALID all set (slurm_cluster.py). Coordinator: the step's
              first node, port SLURM_JOB_ID % 4096 + 61440, as JAX picks them.
  ompi        `mpirun` (Open MPI): OMPI_COMM_WORLD_SIZE / _RANK / _LOCAL_RANK /
              _LOCAL_SIZE; the coordinator's host from OMPI_MCA_orte_hnp_uri as
              ompi_cluster.py parses it (Open MPI <= 4; 5 has no such variable, so
              there give JAX_COORDINATOR_ADDRESS or --coordinator_address).
  kubernetes  an indexed Job (JobSet's jobs are indexed): JOB_COMPLETION_INDEX is
              the process id, as in k8s_cluster.py. The coordinator and the process
              count come from JAX_COORDINATOR_ADDRESS and --num_processes (the
              manifests of gpu/jobset.py set both), else from the Kubernetes API
              through JAX (the `kubernetes` package and pod-read permission needed).
  tpu         a multi-worker Cloud TPU slice (TPU_WORKER_HOSTNAMES): JAX finds
              everything itself and never restricts TPU devices.
  explicit    --coordinator_address, --num_processes and --process_id.

Flags override what a launcher gives; JAX_COORDINATOR_ADDRESS and
JAX_COORDINATOR_PORT (JAX's own variables) override the derived coordinator.

Why spell it out: given nothing, JAX sets ``local_device_ids=[local rank]`` on SLURM
and Open MPI, one GPU per process, so with one task per node (`sbatch
--ntasks-per-node=1`) each node trains on one of its GPUs and nothing says so (the
trap of AI-Hypercomputer/maxtext#865). Here each process takes its share of its
node's GPUs (`local_device_ids`):

  G  the node's GPUs given to the job: SLURM_GPUS_ON_NODE, else the length of
     SLURM_STEP_GPUS or SLURM_JOB_GPUS, else the GPUs the NVIDIA driver lists in
     /proc/driver/nvidia/gpus
  V  the GPUs this process sees: CUDA_VISIBLE_DEVICES, else G
  T  tasks on this node (SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID, else
     SLURM_NTASKS_PER_NODE; OMPI_COMM_WORLD_LOCAL_SIZE), l its local rank

  V >= G  the process sees the whole node: T must divide V; it takes the V/T
          devices from l*V/T on (one task per node: all of them)
  V < G   the launcher bound GPUs to tasks: all V when V*T == G; otherwise
          GPUs would sit idle and start-up stops with a `ConfigError` that names
          the variables and the fix
  JAX_LOCAL_DEVICE_IDS (JAX's variable) set: taken as asked, unchecked.

On CPU (``JAX_PLATFORMS=cpu``, as in the tests) the node's "GPUs" come from the
same variables and the process gets one CPU device per GPU it would use
(``jax_num_cpu_devices``), so the whole layout logic runs without a GPU; with no
GPU variables, the CPU device count stays as XLA_FLAGS sets it.

This module imports no JAX until `initialize` runs (the CLI builds its parser
without it).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Callable, Mapping, Sequence

from jaxtrain.errors import ConfigError

DRIVER_GPUS = "/proc/driver/nvidia/gpus"  # one entry per GPU (PCI address)
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Flags:
  """The multi-host flags of a command; each given one overrides the launcher's.

  Attributes:
    coordinator_address: `--coordinator_address` (HOST:PORT of process 0).
    num_processes: `--num_processes`.
    process_id: `--process_id`.
  """
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


@dataclasses.dataclass(frozen=True)
class Launch:
  """What `jax.distributed.initialize` is given, and how it was found.

  Attributes:
    kind: "slurm", "ompi", "kubernetes", "tpu" or "explicit".
    coordinator_address: HOST:PORT of process 0; None: JAX finds it (tpu, or
      kubernetes through the API).
    num_processes: the process count (None: JAX finds it).
    process_id: this process's index (None: JAX finds it).
    local_device_ids: the GPUs of its node this process uses; None: every device
      it sees.
    layout: how `local_device_ids` was chosen, for the start-up log.
  """
  kind: str
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  local_device_ids: tuple[int, ...] | None
  layout: str


@dataclasses.dataclass(frozen=True)
class _Node:
  """A process's place on its node, in one launcher's variables."""
  local_rank: int
  tasks: int | None       # tasks on this node (None: unknown)
  gpus: int | None        # G: the node's GPUs given to the job (None: unknown)
  gpus_source: str        # the variable G was read from
  rank_var: str           # names of the variables, for messages
  tasks_var: str


def driver_gpu_count() -> int | None:
  """GPUs the NVIDIA driver lists on this machine; None without the driver."""
  try:
    return len(os.listdir(DRIVER_GPUS))
  except OSError:
    return None


def _int(env: Mapping[str, str], name: str) -> int | None:
  value = env.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(name, value, "expected an integer (set by the launcher; "
                      "unset or correct it)") from None


def _id_list(value: str | None) -> list[str] | None:
  """'0,1,2' -> ['0', '1', '2']; None/'' -> None (SLURM also writes GPU lists so)."""
  if value is None or not value.strip():
    return None
  return [v for v in value.split(",") if v.strip()]


def tasks_per_node(spec: str, node_index: int) -> int:
  """SLURM's compressed per-node task counts: '2(x3),1' is 2, 2, 2, 1 by node.

  Args:
    spec: SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE as srun sets it.
    node_index: SLURM_NODEID (the node's index in the step).

  Returns:
    The task count of that node.
  """
  counts = []
  for part in spec.split(","):
    m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if not m:
      raise ConfigError("SLURM_STEP_TASKS_PER_NODE", spec, "not SLURM's 'N(xM),K' "
                        "form; run under srun, or unset it")
    counts += [int(m.group(1))] * int(m.group(2) or 1)
  return counts[min(node_index, len(counts) - 1)]


def first_host(nodelist: str) -> str:
  """The first host of a SLURM host list ('node[003-005,9],gpu1' -> 'node003'),
  as jax/_src/clusters/slurm_cluster.py reads it."""
  m = re.match(r"([^,\[]*)(?:\[([^\]\-,]*))?", nodelist)
  return m.group(1) + (m.group(2) or "")


def _slurm_node(env: Mapping[str, str]) -> _Node:
  tasks_var, tasks = "SLURM_STEP_TASKS_PER_NODE", None
  node = _int(env, "SLURM_NODEID") or 0
  for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
    if env.get(name, "").strip():
      tasks_var, tasks = name, tasks_per_node(env[name], node)
      break
  gpus, source = _int(env, "SLURM_GPUS_ON_NODE"), "SLURM_GPUS_ON_NODE"
  if gpus is None:
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
      ids = _id_list(env.get(name))
      if ids:
        gpus, source = len(ids), name
        break
  return _Node(_int(env, "SLURM_LOCALID") or 0, tasks, gpus, source,
               "SLURM_LOCALID", tasks_var)


def _ompi_node(env: Mapping[str, str]) -> _Node:
  return _Node(_int(env, "OMPI_COMM_WORLD_LOCAL_RANK") or 0,
               _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"), None, "",
               "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")


def _fix_for(kind: str) -> str:
  if kind == "slurm":
    return ("start one task per GPU (srun --ntasks-per-node=G --gpus-per-task=1) or "
            "one task per node that sees all of them (srun --ntasks-per-node=1, "
            "no --gpu-bind), as gpu/slurm.sh does")
  return "start one process per GPU or one per node that sees all of them"


def local_devices(kind: str, node: _Node, env: Mapping[str, str]
                  ) -> tuple[tuple[int, ...] | None, str]:
  """This process's share of its node's GPUs (module docstring), and why.

  Raises:
    ConfigError: a layout that leaves GPUs of the node unused, or that the tasks
      cannot share evenly; names the variables and the fix.
  """
  if env.get("JAX_LOCAL_DEVICE_IDS", "").strip():
    ids = tuple(int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(","))
    return ids, "as JAX_LOCAL_DEVICE_IDS asks"
  visible = _id_list(env.get("CUDA_VISIBLE_DEVICES"))
  g = node.gpus
  v = len(visible) if visible is not None else g
  t = node.tasks or 1
  l = node.local_rank
  where = (f"{node.rank_var}={l}, {node.tasks_var}={node.tasks}, "
           f"{node.gpus_source or 'GPUs on the node'}={g}, "
           f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')}")
  if v is None:  # no GPU information at all: every device the process sees
    return None, "all devices (no GPU variables)"
  if g is None or v >= g:  # the process sees the whole node
    if v % t or l >= t:
      raise ConfigError(node.tasks_var, node.tasks, f"{t} tasks cannot share the "
                        f"node's {v} GPUs evenly ({where}); {_fix_for(kind)}")
    per = v // t
    ids = tuple(range(l * per, (l + 1) * per))
    return ids, f"{per} of the node's {v} GPUs, {t} task(s) per node"
  if v * t == g:
    return tuple(range(v)), f"its {v} bound GPU(s) of the node's {g}, {t} task(s)"
  field = node.gpus_source if node.gpus_source.isupper() else "CUDA_VISIBLE_DEVICES"
  raise ConfigError(field, env.get(field, g),
                    f"this process would use {v} GPU(s) and the node's {t} task(s) "
                    f"{v * t} of its {g}: {g - v * t} would sit idle ({where}); "
                    f"{_fix_for(kind)}, or set JAX_LOCAL_DEVICE_IDS to use a subset "
                    "on purpose")


def _ompi_coordinator(env: Mapping[str, str]) -> str | None:
  """Rank 0's launcher host and a job-derived port, as ompi_cluster.py does."""
  uri = env.get("OMPI_MCA_orte_hnp_uri")
  if not uri:
    return None
  m = re.search(r"tcp://(.+?)[,:]|tcp6://\[(.+?)[,\]]", uri)
  if m is None:
    raise ConfigError("OMPI_MCA_orte_hnp_uri", uri, "no tcp:// address in it; "
                      "pass --coordinator_address=HOST:PORT")
  host = next(h for h in m.groups() if h is not None)
  port = env.get("JAX_COORDINATOR_PORT") or str(
      int(uri.split(".", 1)[0]) // 2**12 % 2**12 + 61440)
  return f"{host}:{port}"


def _detected(env: Mapping[str, str]) -> tuple[str, str | None, int | None,
                                                int | None, _Node | None] | None:
  """(kind, coordinator, num_processes, process_id, node) from the launcher."""
  if all(k in env for k in _SLURM_VARS):
    port = env.get("JAX_COORDINATOR_PORT") or str(
        int(env["SLURM_JOB_ID"]) % 2**12 + 61440)
    return ("slurm", f"{first_host(env['SLURM_STEP_NODELIST'])}:{port}",
            _int(env, "SLURM_NTASKS"), _int(env, "SLURM_PROCID"), _slurm_node(env))
  if "OMPI_COMM_WORLD_SIZE" in env:
    return ("ompi", _ompi_coordinator(env), _int(env, "OMPI_COMM_WORLD_SIZE"),
            _int(env, "OMPI_COMM_WORLD_RANK"), _ompi_node(env))
  if "JOB_COMPLETION_INDEX" in env and "KUBERNETES_SERVICE_HOST" in env:
    # One pod per node sees its node's GPUs (the device plugin's allocation).
    return ("kubernetes", None, None, _int(env, "JOB_COMPLETION_INDEX"),
            _Node(0, 1, None, "", "JOB_COMPLETION_INDEX", "pods per node"))
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return ("tpu", None, len(env["TPU_WORKER_HOSTNAMES"].split(",")), None, None)
  return None


def plan(args: Flags, env: Mapping[str, str] = os.environ,
         node_gpus: Callable[[], int | None] = driver_gpu_count) -> Launch | None:
  """How this process starts: None for a single process, else its `Launch`.

  Args:
    args: the command's multi-host flags (each overrides what a launcher gives).
    env: the environment (the launcher's variables).
    node_gpus: the node's GPU count where no variable gives it (the driver's).

  Returns:
    The `Launch`, or None when this is the only process.

  Raises:
    ConfigError: missing pieces (naming the flag), or a layout that would leave
      GPUs idle (naming the launcher's variables).
  """
  found = _detected(env)
  flags = (args.coordinator_address, args.num_processes, args.process_id)
  if found is None:
    if not args.num_processes or args.num_processes <= 1:
      return None
    if not args.coordinator_address or args.process_id is None:
      raise ConfigError("--coordinator_address", args.coordinator_address,
                        "--num_processes > 1 also needs --coordinator_address="
                        "HOST:PORT and --process_id")
    return Launch("explicit", *flags, None, "all devices (explicit flags)")
  kind, coordinator, count, pid, node = found
  coordinator = (args.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
                 or coordinator)
  count = args.num_processes if args.num_processes is not None else count
  pid = args.process_id if args.process_id is not None else pid
  if count is not None and count <= 1:
    return None
  if kind == "tpu":
    return Launch(kind, None, None, None, None, "JAX's TPU detection")
  if kind == "kubernetes":
    _check_kubernetes(coordinator, count)
  if kind == "ompi" and coordinator is None:
    raise ConfigError("--coordinator_address", None, "Open MPI 5 gives no "
                      "OMPI_MCA_orte_hnp_uri: pass --coordinator_address=HOST:PORT "
                      "(rank 0's host) or set JAX_COORDINATOR_ADDRESS")
  cpu = env.get("JAX_PLATFORMS", "").strip() == "cpu"
  if node.gpus is None and not cpu and (node.tasks or 1) > 1:
    node = dataclasses.replace(node, gpus=node_gpus(), gpus_source=DRIVER_GPUS)
  ids, layout = local_devices(kind, node, env)
  return Launch(kind, coordinator, count, pid, ids, layout)


def _check_kubernetes(coordinator: str | None, count: int | None) -> None:
  if (coordinator is None or count is None) and (
      importlib.util.find_spec("kubernetes") is None):
    missing = "--num_processes" if count is None else "--coordinator_address"
    raise ConfigError(missing, None, "an indexed Kubernetes Job needs the process "
                      "count (--num_processes, the Job's parallelism) and "
                      "JAX_COORDINATOR_ADDRESS (pod 0's HOST:PORT), as "
                      "gpu/jobset.py's manifests set them, or the kubernetes "
                      "package (pip install 'jax[k8s]') to read both from the API")


def initialize(args: Flags, env: Mapping[str, str] = os.environ) -> Launch | None:
  """Joins the other processes (`plan`), then logs what this process sees.

  Returns:
    The `Launch`, or None for a single process (nothing is initialized).
  """
  launch = plan(args, env)
  if launch is None:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  # Only the CPU backend reads this; it lets CPU processes run collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  ids = launch.local_device_ids
  if ids is not None and env.get("JAX_PLATFORMS", "").strip() == "cpu":
    jax.config.update("jax_num_cpu_devices", len(ids))  # CPU stands in for GPUs
  if launch.kind == "tpu":
    jax.distributed.initialize()
  else:
    # 'deactivate': JAX would otherwise fill local_device_ids=[local rank] itself.
    detect = "deactivate" if None not in (launch.coordinator_address,
                                          launch.num_processes) else None
    jax.distributed.initialize(launch.coordinator_address, launch.num_processes,
                               launch.process_id, local_device_ids=ids,
                               cluster_detection_method=detect)
  print(startup_line(launch), flush=True)
  return launch


def _ranges(ids: Sequence[int]) -> str:
  if list(ids) == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 1:
    return f"{ids[0]}-{ids[-1]}"
  return ",".join(map(str, ids))


def startup_line(launch: Launch) -> str:
  """One line: launcher, process index/count, local and global devices."""
  import jax  # pylint: disable=g-import-not-at-top
  ids = launch.local_device_ids
  which = f"ids {_ranges(ids)}: {launch.layout}" if ids else launch.layout
  return (f"jaxtrain: {launch.kind} cluster, process {jax.process_index()} of "
          f"{jax.process_count()}: {jax.local_device_count()} local "
          f"{jax.default_backend()} devices ({which}), {jax.device_count()} global")
