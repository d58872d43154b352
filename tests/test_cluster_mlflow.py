"""Issue 23, point 1: ``cluster.yaml``'s own MLflow server command serves a real sweep.

The head is a network namespace made by this test (a veth pair: the "head" at 198.18.N.2,
this process on the other side at 198.18.N.1; RFC 2544's benchmark range, routed nowhere, and
like a cluster's internal address not among the Host headers MLflow 3 accepts by default). In
it runs, unchanged, ``cluster.yaml``'s ``head_setup_commands`` line that writes
``~/mlflow_host`` (``hostname -I``) and the ``head_start_ray_commands`` entry that starts
``mlflow server``: ``lungray mlflow-auth``, the basic-auth app and its ini, ``--allowed-hosts``,
port 5000; only ``/efs/lungray`` is a temporary folder. A real sweep (the smoke preset, real
training) then runs here as the cluster's nodes do: ``MLFLOW_TRACKING_URI=http://<head>:5000``
and the non-admin user of ``mlflow.env`` in its environment.

Without ``--allowed-hosts`` (the command as it was) the same sweep ends in one line naming the
Host-header check; a wrong password is one line too, before Ray starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lungray.sweep.cluster_server import probe_server, serve_head_command, server_entry
from lungray.sweep.mlflow_auth import read_env_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def head_netns():
    """A network namespace with one veth link to this one: the cluster head's address."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 (ip netns) for a non-loopback head address")
    n = os.getpid() % 250 + 1
    ns, host_if, ns_if = f"lrhead{os.getpid()}", f"lrh{os.getpid()}"[:15], f"lrn{os.getpid()}"[:15]
    made = _ip("netns", "add", ns)
    if made.returncode:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        for args in (
            ("link", "add", host_if, "type", "veth", "peer", "name", ns_if),
            ("link", "set", ns_if, "netns", ns),
            ("addr", "add", f"198.18.{n}.1/30", "dev", host_if),
            ("link", "set", host_if, "up"),
            ("-n", ns, "addr", "add", f"198.18.{n}.2/30", "dev", ns_if),
            ("-n", ns, "link", "set", ns_if, "up"),
            ("-n", ns, "link", "set", "lo", "up"),
        ):
            r = _ip(*args)
            assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"
        yield {"ns": ns, "head": f"198.18.{n}.2"}
    finally:
        _ip("link", "del", host_if)
        _ip("netns", "del", ns)


def _hostname_line() -> str:
    (line,) = [c for c in CLUSTER["head_setup_commands"] if "mlflow_host" in c and "hostname -I" in c]
    return line


def _sweep_env(uri: str, creds: dict, ray_tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "RAY_ADDRESS"}
    env.update(creds)  # as `set -a; . ~/.lungray/mlflow.env` does on every node
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", RAY_TMPDIR=str(ray_tmp))
    return env


def _sweep(tmp_path: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(REPO / "sweeps" / "size_study.py"), "--preset", "smoke", "--set", "models=[simple_cnn]",
            "--set", "sizes=[20]", "--set", "seeds=[0]", "--set", "schedule.epochs=1", "--set", "tracking.gradcam=false",
            "--output", str(tmp_path / "runs"), "--address", "local", *extra]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)


@pytest.fixture
def ray_tmp():
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="lrm", dir="/tmp"))  # Ray's socket paths: keep it short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_cluster_yaml_mlflow_command_serves_a_real_sweep_on_the_heads_address(head_netns, tmp_path, ray_tmp):
    entry = server_entry(CLUSTER)
    assert "--allowed-hosts" in entry and "lungray mlflow-auth" in entry  # the command under test is the file's
    with serve_head_command(entry, host="", netns=head_netns["ns"], setup_commands=[_hostname_line()], port=5000,
                            efs=tmp_path / "efs" / "lungray", timeout=300) as head:
        assert head.host == head_netns["head"] and head.uri == f"http://{head_netns['head']}:5000"
        # what check-cluster checks, here over the head's real address
        line = probe_server(head)
        assert "runs user 'lungray-runs' not an admin" in line
        creds = read_env_file(head.env_file)
        # the admin's password stayed on the head, in its own 0600 file, and is not the runs user's
        server_env = head.home / ".lungray" / "mlflow_server.env"
        assert oct(server_env.stat().st_mode & 0o777) == "0o600"
        admin_pw = read_env_file(server_env)["MLFLOW_AUTH_ADMIN_PASSWORD"]
        assert admin_pw != creds["MLFLOW_TRACKING_PASSWORD"] and admin_pw not in head.env_file.read_text()

        sweep = _sweep(tmp_path, _sweep_env(head.uri, creds, ray_tmp))
        console = sweep.stdout + sweep.stderr
        assert sweep.returncode == 0, console[-4000:] + head.log()[-3000:]
        assert f"MLflow: {head.uri} experiment" in console

        # the runs are on the head's server, written by the non-admin user, artifacts proxied
        from mlflow import MlflowClient

        os.environ.update(creds)
        try:
            c = MlflowClient(head.uri)
            exp = c.get_experiment_by_name("smoke")
            assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")
            runs = c.search_runs([exp.experiment_id])
            roles = sorted(r.data.tags.get("lungray.role") for r in runs)
            assert roles == ["sweep", "trial"]
            (trial,) = [r for r in runs if r.data.tags["lungray.role"] == "trial"]
            assert trial.info.status == "FINISHED" and 0.0 <= trial.data.metrics["test_accuracy"] <= 1.0
            preds = Path(c.download_artifacts(trial.info.run_id, "predictions.csv", str(tmp_path / "dl")))
            assert preds.read_text().startswith("image_id,y_true,")
        finally:
            for k in creds:
                os.environ.pop(k, None)
        (exp_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "sweep.json").exists()]
        assert (exp_dir / "report" / "report.html").is_file()

        # a wrong password: one line, before Ray starts (no Ray session was made)
        bad = dict(creds, MLFLOW_TRACKING_PASSWORD="not-the-password-0000")
        before = set(ray_tmp.rglob("session_*"))
        wrong = _sweep(tmp_path, _sweep_env(head.uri, bad, ray_tmp))
        err = wrong.stderr.strip().splitlines()
        assert wrong.returncode == 2 and len(err) == 1, wrong.stdout[-2000:] + wrong.stderr[-3000:]
        assert "refused the credentials of user 'lungray-runs' (401 Unauthorized)" in err[0]
        assert set(ray_tmp.rglob("session_*")) == before
        # and `lungray report` says the same in one line (it printed 37)
        rep = subprocess.run([sys.executable, "-m", "lungray", "report", "--out", str(tmp_path / "report2")],
                             capture_output=True, text=True, env=_sweep_env(head.uri, bad, ray_tmp), cwd=tmp_path, timeout=300)
        err = rep.stderr.strip().splitlines()
        assert rep.returncode == 2 and len(err) == 1 and err[0].startswith("lungray: error: the MLflow server refused the credentials"), rep.stderr


def test_without_allowed_hosts_the_sweep_ends_in_one_line_naming_the_host_check(head_netns, tmp_path, ray_tmp):
    """The command as it was before issue 23 (no --allowed-hosts): MLflow 3 answers 403
    "Invalid Host header"; the sweep says so in one line instead of a 40-line traceback."""
    entry = server_entry(CLUSTER)
    old = entry.split("--allowed-hosts")[0] + "> ~/mlflow_server.log" + entry.split("> ~/mlflow_server.log")[1]
    assert "--allowed-hosts" not in old and "mlflow server" in old
    with serve_head_command(old, host="", netns=head_netns["ns"], setup_commands=[_hostname_line()], port=5000,
                            efs=tmp_path / "efs" / "lungray", timeout=300) as head:
        creds = read_env_file(head.env_file)
        sweep = _sweep(tmp_path, _sweep_env(head.uri, creds, ray_tmp))
        err = sweep.stderr.strip().splitlines()
        assert sweep.returncode == 2 and len(err) == 1, sweep.stdout[-2000:] + sweep.stderr[-3000:]
        assert "403 Invalid Host header" in err[0] and "--allowed-hosts" in err[0]
