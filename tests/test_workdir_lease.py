"""One run per workdir: the lease (jaxtrain/lease.py), locally, on gs://, and
between two real `jaxtrain train` processes started on one workdir."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import processes

from jaxtrain import lease as lease_lib
from jaxtrain.errors import ConfigError

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")


def _write_lease(path, **fields):
  lease = {"host": socket.gethostname(), "boot_id": lease_lib._boot_id(),  # pylint: disable=protected-access
           "pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00",
           "refreshed_s": time.time(), "token": "someone-else", **fields}
  with open(path, "w") as f:
    json.dump(lease, f)


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  first = lease_lib.Lease(str(tmp_path))
  first.acquire()
  with open(tmp_path / lease_lib.NAME) as f:
    held = json.load(f)
  assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
  with pytest.raises(ConfigError, match=f"another jaxtrain run holds it: PID "
                     f"{os.getpid()} on host {socket.gethostname()}, started "):
    lease_lib.Lease(str(tmp_path)).acquire()
  first.release()
  assert not os.path.exists(tmp_path / lease_lib.NAME)
  second = lease_lib.Lease(str(tmp_path))
  second.acquire()  # free again
  second.release()


def test_a_dead_holder_on_this_host_is_taken_over_with_a_message(tmp_path):
  pid = _dead_pid()
  _write_lease(tmp_path / lease_lib.NAME, pid=pid)
  said = []
  lease = lease_lib.Lease(str(tmp_path), report=said.append)
  lease.acquire()
  assert said == [f"Took over the workdir lease of PID {pid} on host "
                  f"{socket.gethostname()}, started 2026-01-01T00:00:00+00:00: process "
                  f"{pid} is no longer running on this host"]
  with open(tmp_path / lease_lib.NAME) as f:
    assert json.load(f)["pid"] == os.getpid()
  lease.release()


def test_another_hosts_lease_is_kept_while_fresh_and_taken_when_stale(tmp_path):
  _write_lease(tmp_path / lease_lib.NAME, host="elsewhere", pid=1)
  with pytest.raises(ConfigError, match="PID 1 on host elsewhere"):
    lease_lib.Lease(str(tmp_path)).acquire()
  _write_lease(tmp_path / lease_lib.NAME, host="elsewhere", pid=1,
               refreshed_s=time.time() - lease_lib.STALE_S - 60)
  said = []
  lease = lease_lib.Lease(str(tmp_path), report=said.append)
  lease.acquire()
  assert len(said) == 1 and "PID 1 on host elsewhere" in said[0]
  assert f"stale after {lease_lib.STALE_S:.0f} s" in said[0]
  lease.release()


def test_the_lease_is_refreshed_and_its_loss_is_noticed(tmp_path, monkeypatch):
  monkeypatch.setattr(lease_lib, "REFRESH_S", 0.05)
  lost = threading.Event()
  holders = []
  lease = lease_lib.Lease(str(tmp_path),
                          on_lost=lambda h: (holders.append(h), lost.set()))
  lease.acquire()
  path = tmp_path / lease_lib.NAME
  with open(path) as f:
    first = json.load(f)["refreshed_s"]
  time.sleep(0.3)
  with open(path) as f:
    assert json.load(f)["refreshed_s"] > first
  _write_lease(path, host="elsewhere", pid=7)  # taken over by another run
  assert lost.wait(10)
  assert holders == ["PID 7 on host elsewhere, started 2026-01-01T00:00:00+00:00"]
  lease.release()
  assert os.path.exists(path)  # the other run's lease is not removed


def test_leases_on_gs_use_generation_preconditions(gcs):
  from gcs_emulator import BUCKET  # pylint: disable=g-import-not-at-top
  workdir = f"gs://{BUCKET}/lease_test"
  first = lease_lib.Lease(workdir)
  first.acquire()
  held = json.loads(gcs.read(f"lease_test/{lease_lib.NAME}"))
  assert held["pid"] == os.getpid()
  with pytest.raises(ConfigError, match=f"PID {os.getpid()}"):
    lease_lib.Lease(workdir).acquire()
  # A refresh is a write conditional on the generation this run wrote last.
  store = first._store  # pylint: disable=protected-access
  version = store.replace(first._text(), first._version)  # pylint: disable=protected-access
  assert version is not None and version != first._version  # pylint: disable=protected-access
  assert store.replace("{}", first._version) is None  # pylint: disable=protected-access
  first._version = version  # pylint: disable=protected-access
  first.release()
  assert f"lease_test/{lease_lib.NAME}" not in gcs.names("lease_test/")
  # A stale lease of another host is taken over: one conditional delete wins.
  stale = {"host": "elsewhere", "pid": 1, "token": "x",
           "refreshed_s": time.time() - lease_lib.STALE_S - 60}
  assert store.create(json.dumps(stale)) is not None
  said = []
  taker = lease_lib.Lease(workdir, report=said.append)
  taker.acquire()
  assert len(said) == 1 and "PID 1 on host elsewhere" in said[0]
  taker.release()


def _train_cmd(workdir, steps):
  return processes.jaxtrain_cmd(
      "train", f"--config={EXPERIMENT}", f"--workdir={workdir}",
      f"--config.train.num_steps={steps}", "--config.train.num_epochs=0",
      "--config.train.batch_size=32", "--config.train.log_every=10",
      "--config.train.eval_every=0", "--config.checkpoint.every=50",
      "--config.model.name=mlp", "--config.optimizer.schedule.warmup_steps=2")


def test_a_second_trainer_on_a_busy_workdir_exits_2_naming_the_first(tmp_path):
  env = processes.cpu_env(8)
  first = subprocess.Popen(_train_cmd(tmp_path, 100000), env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    for line in first.stdout:  # training: the first run holds the lease
      if line.startswith("step "):
        break
    second = subprocess.run(
        _train_cmd(tmp_path, 100000) + ["--config.optimizer.learning_rate=0.5"],
        env=env, capture_output=True, text=True, timeout=300)
    assert first.poll() is None  # still training
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.startswith(
        f"jaxtrain: error: --workdir='{tmp_path}': another jaxtrain run holds it: "
        f"PID {first.pid} on host {socket.gethostname()}, started ")
    assert "step " not in second.stdout
  finally:
    first.send_signal(signal.SIGTERM)  # checkpoints and exits 143 (128 + SIGTERM)
    out = first.communicate(timeout=300)[0]
  assert first.returncode == 143, out
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == sorted(set(steps))  # every step once: one writer
  assert not os.path.exists(tmp_path / lease_lib.NAME)  # released at the end
