"""End to end on a fake multi-node cluster built from ``cluster.yaml``'s node types.

``ray up`` cannot reach a cloud here (and Ray 2.60's fake provider example YAML is missing, so
``RAY_FAKE_CLUSTER=1 ray up`` is broken), but the real autoscaler with fake nodes works:
``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=<fake yaml>`` brings up a head and
launches one fake worker node per ``cluster.yaml`` worker type (1 CPU each, as processes on
this machine). The smoke sweep then runs against it through ``RAY_ADDRESS`` (``address="auto"``)
and its two trials must train on two different nodes.

Isolation from other Ray instances on the machine: the head uses a free port and its own
``--temp-dir`` (so a plain ``ray.init()`` elsewhere never joins it), and it is stopped by
killing the processes of its own session by id: never ``ray stop``, which would stop every
Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from lungray.sweep.cluster import fake_cluster_config

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.splitlines()
    return [int(p) for p, s in (ln.split() for ln in out if len(ln.split()) == 2) if int(s) == sid]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the fake cluster: TERM then KILL every process of the head's session, by id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3 if sig == signal.SIGTERM else 0.5)
    proc.wait(timeout=30)


def _active_worker_types(address: str, env: dict) -> list[str]:
    p = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, env=env, timeout=120)
    lines = p.stdout.splitlines()
    try:
        start = lines.index("Active:") + 1
    except ValueError:
        return []
    active = []
    for ln in lines[start:]:
        if not ln.startswith(" "):
            break
        parts = ln.split()
        if len(parts) == 2 and parts[1] != "ray.head.default":
            active += [parts[1]] * int(parts[0])
    return active


@pytest.fixture()
def fake_cluster(tmp_path):
    from ray._private.services import get_node_ip_address

    ip = get_node_ip_address()
    port = _free_port()
    address = f"{ip}:{port}"
    cfg = fake_cluster_config(REPO / "cluster.yaml", cpus_per_worker_node=1, head_cpus=1, gcs_address=address)
    fake_yaml = tmp_path / "fake_cluster.yaml"
    fake_yaml.write_text(json.dumps(cfg))
    temp_dir = tempfile.mkdtemp(prefix="lrc", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", f"--autoscaling-config={fake_yaml}", f"--temp-dir={temp_dir}",
         "--num-cpus=1", "--include-dashboard=false", "--dashboard-agent-listen-port=0", "--block"],
        stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        want = sorted(k for k in cfg["available_node_types"] if k != "ray.head.default")
        deadline = time.time() + 300
        while sorted(_active_worker_types(address, env)) != want:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.time() < deadline, f"fake worker nodes {want} did not come up"
            time.sleep(2)
        yield address, fake_yaml, env
    finally:
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_smoke_sweep_runs_on_several_nodes_of_a_fake_cluster(fake_cluster, tmp_path):
    address, fake_yaml, env = fake_cluster
    out = tmp_path / "runs"
    env = {k: v for k, v in env.items() if k != "RAY_FAKE_CLUSTER"}
    env.update({"RAY_ADDRESS": address, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"})
    p = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "size_study.py"), "--preset", "smoke", "--set", "models=[logreg]", "--set", "seeds=[0]",
         "--output", str(out), "--no-report", "--cluster-config", str(fake_yaml)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "(fake_cluster.yaml) + autoscaling" in p.stdout  # the preflight read the node types
    (exp_dir,) = [d for d in out.iterdir() if (d / "sweep.json").exists()]
    trials = pd.read_csv(exp_dir / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "done").all()
    assert trials["node_id"].nunique() == 2, trials[["train_size", "node_id"]]
    assert all(str(n).startswith("fffff") for n in trials["node_id"])  # fake nodes, not this process's local Ray
