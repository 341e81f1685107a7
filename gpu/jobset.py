#!/usr/bin/env python3
"""Kubernetes manifest for jaxtrain on N nodes x G GPUs: a headless Service and a
JobSet (https://jobset.sigs.k8s.io, API jobset.x-k8s.io/v1alpha2) of one indexed
Job with one pod per node. Prints YAML on stdout (`kubectl apply -f -`).

    python3 gpu/jobset.py --name=r50 --image=REGISTRY/jaxtrain:latest --nodes=2 \\
        --gpus-per-node=8 --config=experiments/resnet50_imagenet_lars.py \\
        --workdir=gs://BUCKET/runs/r50 -- --config.train.batch_size=2048 > r50.yaml

How the pods find each other (jaxtrain/parallel/cluster.py, "kubernetes"): the
indexed Job gives each pod JOB_COMPLETION_INDEX (its process id, as JAX's own
k8s_cluster.py reads it); the Service makes pod 0 resolvable as
NAME-workers-0-0.NAME before it is ready (publishNotReadyAddresses), and the
manifest passes that address as JAX_COORDINATOR_ADDRESS and the pod count as
--num_processes, so no Kubernetes API access is needed. Each pod uses all G GPUs
of its node.

Preemption: a pod that gets SIGTERM (node drain, spot reclaim, eviction) passes it
to jaxtrain, which saves a checkpoint within terminationGracePeriodSeconds and
exits 143; the pod exits 143 whatever the program's code after a SIGTERM, so its
Job fails (an exit 0 would count as a finished pod) and the JobSet's failurePolicy recreates all pods, which resume from
the checkpoint, up to --max-restarts times. Only standard library (no PyYAML).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Sequence

# Run by the pod's bash: forward SIGTERM to jaxtrain, exit 143 after it stops on it.
ENTRYPOINT = """\
trap 'stopped=1; kill -TERM "$pid" 2>/dev/null' TERM
"$@" &
pid=$!
wait "$pid"; rc=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
if [ -n "${stopped:-}" ]; then
  echo "jaxtrain stopped by SIGTERM (checkpoint saved): exit 143 so the JobSet restarts" >&2
  exit 143
fi
exit "$rc"
"""
REPLICATED_JOB = "workers"
NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")  # a DNS label, <= 40 chars
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.S)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="gpu/jobset.py", description=__doc__.split("\n\n")[0],
      epilog="Arguments after '--' go to jaxtrain unchanged (config overrides).")
  p.add_argument("--name", required=True,
                 help="JobSet, Service and pod name prefix (lower case, digits, '-')")
  p.add_argument("--image", required=True,
                 help="container image with jaxtrain[cuda] installed")
  p.add_argument("--config", required=True, help="experiment module in the image")
  p.add_argument("--workdir", required=True,
                 help="run directory all pods share: gs://BUCKET/PATH or a path on "
                 "--volume")
  p.add_argument("--nodes", type=int, default=1, help="pods, one per node [1]")
  p.add_argument("--gpus-per-node", type=int, default=8,
                 help="GPUs per pod (nvidia.com/gpu) [8]")
  p.add_argument("--command", default="train", choices=("train", "sweep", "lr-find"),
                 help="jaxtrain subcommand [train]")
  p.add_argument("--namespace", help="namespace of both objects [kubectl's]")
  p.add_argument("--port", type=int, default=55527,
                 help="coordinator port on pod 0 [55527, JAX's Kubernetes default]")
  p.add_argument("--max-restarts", type=int, default=10,
                 help="JobSet restarts (all pods, from the checkpoint) [10]")
  p.add_argument("--grace-seconds", type=int, default=600,
                 help="terminationGracePeriodSeconds: time to checkpoint after "
                 "SIGTERM [600]")
  p.add_argument("--python", default="python3", help="Python in the image [python3]")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="environment variable for jaxtrain (repeatable)")
  p.add_argument("--volume", metavar="CLAIM:PATH",
                 help="mount PersistentVolumeClaim CLAIM (ReadWriteMany) at PATH")
  p.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                 help="node label the pods need (repeatable), e.g. "
                 "cloud.google.com/gke-accelerator=nvidia-h200-141gb")
  p.add_argument("--shm", default="16Gi",
                 help="size of /dev/shm (NCCL and input workers use it) [16Gi]")
  return p


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
  if not NAME_RE.fullmatch(a.name):
    p.error(f"--name={a.name}: use lower-case letters, digits and '-', starting "
            "with a letter, at most 40 characters (it prefixes pod host names)")
  for flag, value in (("--nodes", a.nodes), ("--gpus-per-node", a.gpus_per_node),
                      ("--port", a.port), ("--grace-seconds", a.grace_seconds)):
    if value < 1:
      p.error(f"{flag}={value}: must be positive")
  for kv in a.env + a.node_selector:
    if "=" not in kv or not kv.split("=", 1)[0]:
      p.error(f"{kv!r}: expected KEY=VALUE")
  for kv in a.env:
    if not ENV_RE.fullmatch(kv):
      p.error(f"--env={kv}: KEY must be a variable name")
  if a.volume and not re.fullmatch(r"[a-z0-9][-a-z0-9.]*:/.*", a.volume):
    p.error(f"--volume={a.volume}: expected CLAIM:/ABSOLUTE/PATH")


def coordinator(name: str, port: int) -> str:
  """Pod 0's stable address: JobSet pods are NAME-JOB-JOBINDEX-PODINDEX.SUBDOMAIN."""
  return f"{name}-{REPLICATED_JOB}-0-0.{name}:{port}"


def _container(a: argparse.Namespace, args: Sequence[str]) -> dict[str, Any]:
  command = [a.python, "-m", "jaxtrain.cli", a.command, f"--config={a.config}",
             f"--workdir={a.workdir}", f"--num_processes={a.nodes}", *args]
  env = [{"name": "JAX_COORDINATOR_ADDRESS", "value": coordinator(a.name, a.port)}]
  env += [{"name": k, "value": v} for k, v in (kv.split("=", 1) for kv in a.env)]
  mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
  if a.volume:
    mounts.append({"name": "workdir", "mountPath": a.volume.split(":", 1)[1]})
  # Kubernetes expands $(VAR) in a container's command; $$ keeps a literal $.
  command = [w.replace("$(", "$$(") for w in command]
  return {"name": "jaxtrain", "image": a.image,
          "command": ["bash", "-c", ENTRYPOINT, "jaxtrain", *command],
          "env": env, "ports": [{"containerPort": a.port, "name": "coordinator"}],
          "resources": {"limits": {"nvidia.com/gpu": a.gpus_per_node}},
          "volumeMounts": mounts}


def manifests(a: argparse.Namespace, args: Sequence[str]) -> list[dict[str, Any]]:
  """The Service and the JobSet, as dicts."""
  meta = {"name": a.name, **({"namespace": a.namespace} if a.namespace else {})}
  service = {
      "apiVersion": "v1", "kind": "Service", "metadata": meta,
      "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
               "selector": {"jobset.sigs.k8s.io/jobset-name": a.name}}}
  volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": a.shm}}]
  if a.volume:
    volumes.append({"name": "workdir", "persistentVolumeClaim": {
        "claimName": a.volume.split(":", 1)[0]}})
  pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": a.grace_seconds,
         "containers": [_container(a, args)], "volumes": volumes}
  if a.node_selector:
    pod["nodeSelector"] = dict(kv.split("=", 1) for kv in a.node_selector)
  job = {"parallelism": a.nodes, "completions": a.nodes, "completionMode": "Indexed",
         "backoffLimit": 0, "template": {"spec": pod}}
  jobset = {
      "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": meta,
      "spec": {"failurePolicy": {"maxRestarts": a.max_restarts},
               "network": {"enableDNSHostnames": True, "subdomain": a.name,
                           "publishNotReadyAddresses": True},
               "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1,
                                   "template": {"spec": job}}]}}
  return [service, jobset]


def _scalar(v: Any) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, int):
    return str(v)
  return json.dumps(str(v))  # a JSON string is a YAML double-quoted scalar


def _key(k: str) -> str:
  return k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-/]*", k) else json.dumps(k)


def to_yaml(v: Any, indent: int = 0) -> list[str]:
  """Block-style YAML lines for dicts, lists and scalars (strings always quoted)."""
  pad = " " * indent
  if isinstance(v, dict):
    lines = []
    for k, x in v.items():
      if isinstance(x, (dict, list)) and x:
        lines += [f"{pad}{_key(k)}:", *to_yaml(x, indent + 2)]
      else:
        lines.append(f"{pad}{_key(k)}: {_scalar(x) if x != {} else '{}'}")
    return lines
  lines = []
  for x in v:
    sub = to_yaml(x, indent + 2) if isinstance(x, (dict, list)) else [
        f"{pad}  {_scalar(x)}"]
    lines += [f"{pad}- {sub[0].lstrip()}", *sub[1:]]
  return lines


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = argv[argv.index("--") + 1:] if "--" in argv else []
  own = argv[:argv.index("--")] if "--" in argv else argv
  p = _parser()
  a = p.parse_args(own)
  _check(p, a)
  docs = ["\n".join(to_yaml(m)) for m in manifests(a, args)]
  print("---\n".join(d + "\n" for d in docs), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
