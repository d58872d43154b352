"""``check-cluster`` runs the head's MLflow server command here, before ``ray up`` (issue 23, point 1).

Reading ``cluster.yaml`` could not tell that ``mlflow server --app-name basic-auth`` needs
Flask-WTF (``mlflow[auth]``) and ``MLFLOW_FLASK_SERVER_SECRET_KEY``, or that MLflow 3 answers
every API call with 403 "Invalid Host header" when the server is bound to the head's internal
address without ``--allowed-hosts``: ``check-cluster`` said OK and the sweep died on the
cluster. So :func:`serve_head_command` runs the entry of ``head_start_ray_commands`` that
starts ``mlflow server``, as written, in a throw-away home: the same flags, the same
``lungray mlflow-auth`` and ini, the auth app. What differs is only what cannot exist here:
``/efs/lungray`` is a temporary folder, the port a free one, ``~/mlflow_host`` holds a loopback
address other than 127.0.0.1 (127.0.0.2, which MLflow's default Host check refuses like any
internal address) and ``~/.lungray/mlflow.env`` is the user's own (or a generated one). Then
:func:`probe_server` checks, through that address, what a sweep needs: the runs user creates an
experiment and a run and logs a metric and an artifact; it is not an admin; a request without
credentials is refused.

The CI test (``tests/test_cluster_mlflow.py``) runs the same command on a non-loopback
address (a network namespace) and a real sweep against it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from lungray.errors import ConfigError

EFS = "/efs/lungray"


@dataclass
class ServedCommand:
    """A running copy of the head's server command: its address, home and process group."""

    uri: str
    host: str
    port: int
    home: Path
    pgid: int
    env_file: Path

    def log(self) -> str:
        p = self.home / "mlflow_server.log"
        return p.read_text(errors="replace") if p.exists() else ""


def server_entry(cfg: Mapping[str, Any]) -> str:
    """The ``head_start_ray_commands`` entry that starts ``mlflow server``."""
    from lungray.sweep import shell as SH

    for line in cfg.get("head_start_ray_commands", []) or []:
        if any(SH.is_mlflow_server(c) for c in SH.Shell().commands(str(line))):
            return str(line)
    raise ConfigError("head_start_ray_commands has no 'mlflow server' command")


def _port_of(entry: str) -> int:
    m = re.search(r"--port[=\s]+(\d+)", entry)
    return int(m.group(1)) if m else 5000


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _shims(bin_dir: Path) -> None:
    """``lungray`` and ``mlflow`` on PATH as this interpreter's (the cluster installs both)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("lungray", "mlflow"):
        p = bin_dir / name
        p.write_text(f"#!/bin/sh\nexec {sys.executable} -m {name} \"$@\"\n")
        p.chmod(0o755)


@contextmanager
def serve_head_command(
    entry: str,
    *,
    host: str,
    mlflow_env: Optional[Path] = None,
    efs: Optional[Path] = None,
    port: Optional[int] = None,
    netns: Optional[str] = None,
    setup_commands: Sequence[str] = (),
    timeout: float = 120.0,
) -> Iterator[ServedCommand]:
    """Run the head's server ``entry`` (one ``head_start_ray_commands`` item) in a throw-away
    home and yield it once it answers; stopped (its whole process group) on exit.

    ``host`` goes into ``~/mlflow_host`` unless ``setup_commands`` (cluster.yaml's
    ``head_setup_commands`` entry ``hostname -I | awk '{print $1}' > ~/mlflow_host``) write it;
    ``netns`` runs both inside that network namespace (``ip netns exec``, root only: the CI
    test's non-loopback head).
    """
    home = Path(tempfile.mkdtemp(prefix="lrhead"))
    pgid = None
    try:
        (home / ".lungray").mkdir(mode=0o700)
        env_file = home / ".lungray" / "mlflow.env"
        if mlflow_env is not None and Path(mlflow_env).expanduser().is_file():
            # the user's runs user, nothing else: LUNGRAY_MLFLOW_DB would point this run at the real database
            from lungray.sweep.mlflow_auth import RUNS_PASSWORD, RUNS_USER, read_env_file

            theirs = read_env_file(Path(mlflow_env).expanduser())
            env_file.write_text("".join(f"{k}={theirs[k]}\n" for k in (RUNS_USER, RUNS_PASSWORD) if k in theirs))
        else:
            env_file.write_text(f"MLFLOW_TRACKING_USERNAME=lungray-runs\nMLFLOW_TRACKING_PASSWORD={secrets.token_hex(16)}\n")
        env_file.chmod(0o600)
        efs = Path(efs) if efs is not None else home / "efs" / "lungray"
        (efs / "mlflow").mkdir(parents=True, exist_ok=True)
        _shims(home / "bin")
        real_port = _port_of(entry)
        port = port or free_port(host if netns is None else "127.0.0.1")
        cmd = entry.replace(EFS, str(efs))
        cmd = re.sub(rf"--port([=\s]+){real_port}\b", rf"--port\g<1>{port}", cmd)
        cmd = re.sub(rf":{real_port}\b", f":{port}", cmd)
        env = {
            "HOME": str(home),
            "PATH": f"{home / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
        }
        for c in setup_commands:
            _run(c, env, netns)
        if not setup_commands:
            (home / "mlflow_host").write_text(host + "\n")
        host = (home / "mlflow_host").read_text().strip()
        proc = _run(cmd, env, netns, wait=False)
        pgid = proc.pid
        out, _ = proc.communicate(timeout=timeout)
        if proc.returncode:
            raise ConfigError(f"the head's MLflow server command failed here (exit {proc.returncode}): {_last_error(out + _read(home / 'mlflow_server.log'))}")
        served = ServedCommand(uri=f"http://{host}:{port}", host=host, port=port, home=home, pgid=pgid, env_file=env_file)
        _wait_healthy(served, timeout)
        yield served
    finally:
        if pgid is not None:
            _stop(pgid, home)
        shutil.rmtree(home, ignore_errors=True)


def _run(cmd: str, env: Mapping[str, str], netns: Optional[str], wait: bool = True) -> subprocess.Popen:
    argv = ["bash", "-c", cmd]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if wait:
        out, _ = proc.communicate(timeout=60)
        if proc.returncode:
            raise ConfigError(f"'{cmd}' failed here (exit {proc.returncode}): {_last_error(out)}")
    return proc


def _read(p: Path) -> str:
    return p.read_text(errors="replace") if p.exists() else ""


def _last_error(text: str) -> str:
    """The line of a log that says what went wrong (an exception line, else the last line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^(\w+\.)*\w*(Error|Exception)\b|^Error\b|lungray: error:", ln):
            return ln[:400]
    return lines[-1][:400] if lines else "no output"


def _wait_healthy(s: ServedCommand, timeout: float) -> None:
    import urllib.request

    pid_file = s.home / "mlflow_server.pid"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{s.uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        pid = int(pid_file.read_text().strip()) if pid_file.exists() and pid_file.read_text().strip().isdigit() else None
        dead = pid is not None and not _alive(pid)
        if dead or time.monotonic() > deadline:
            why = "exited" if dead else f"did not answer at {s.uri} within {timeout:.0f} s"
            raise ConfigError(f"the head's MLflow server command {why} here: {_last_error(s.log())}")
        time.sleep(0.3)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def _stop(pgid: int, home: Path) -> None:
    """Stop the server: its process group (bash's, which nohup keeps), then its pid file's."""
    pids = []
    pid_file = home / "mlflow_server.pid"
    if pid_file.exists() and pid_file.read_text().strip().isdigit():
        pids.append(int(pid_file.read_text().strip()))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        if not any(_alive(p) for p in pids):
            return


def probe_server(s: ServedCommand) -> str:
    """What a sweep needs from the server, through its real address; one line, or ConfigError."""
    import json
    import urllib.error
    import urllib.request

    from lungray.sweep.mlflow_auth import RUNS_PASSWORD, RUNS_USER, read_env_file

    creds = read_env_file(s.env_file)
    user, pw = creds.get(RUNS_USER, ""), creds.get(RUNS_PASSWORD, "")

    def call(path: str, auth: bool = True, timeout: float = 10) -> tuple[int, str]:
        import base64

        req = urllib.request.Request(f"{s.uri}{path}")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    # the first call creates the tracking store's tables (tens of seconds on SQLite): wait for it
    code, body = call("/api/2.0/mlflow/experiments/search?max_results=1", timeout=180)
    if code == 403 and "Invalid Host header" in body:
        raise ConfigError(
            f"the head's MLflow server refuses its own address as Host ({s.host}:{s.port}): 403 Invalid Host header; "
            "add --allowed-hosts \"$(cat ~/mlflow_host):5000,localhost:*,127.0.0.1:*\" to 'mlflow server'"
        )
    if code not in (200, 401):
        raise ConfigError(f"the head's MLflow server refused the runs user '{user}' of mlflow.env ({code}: {body.strip()[:200]})")
    code, body = call("/api/2.0/mlflow/experiments/search?max_results=1", auth=False)
    if code != 401:
        raise ConfigError(f"the head's MLflow server answered a request without credentials with {code}, not 401: it does not authenticate")
    code, body = call(f"/api/2.0/mlflow/users/get?username={user}")
    if code != 200:
        raise ConfigError(f"the head's MLflow server refused the runs user '{user}' of mlflow.env ({code}: {body.strip()[:200]})")
    if json.loads(body).get("user", {}).get("is_admin"):
        raise ConfigError(f"the runs user '{user}' of mlflow.env is an MLflow admin, and every node holds its password; use a non-admin user")
    _sweep_like_writes(s.uri, user, pw)
    return (f"its MLflow server command served here at {s.host}:{s.port} (basic-auth app, Host header accepted, "
            f"requests without credentials refused, runs user '{user}' not an admin, wrote a run with a metric and an artifact)")


def _sweep_like_writes(uri: str, user: str, pw: str) -> None:
    """Experiment, run, metric, proxied artifact, as the runs user, through lungray's client."""
    from lungray.sweep import mlflow_run as M
    from lungray.sweep.ray_env import scoped_env

    with scoped_env({"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": pw}):
        exp = M.ensure_experiment(uri, "lungray-check-cluster")
        c = M.client(uri)
        run = M.retry(lambda: c.create_run(exp))
        M.log_metrics(c, run.info.run_id, {"check": 1.0})
        M.retry(lambda: c.log_text(run.info.run_id, "check-cluster", "check.txt"))
        M.retry(lambda: c.set_terminated(run.info.run_id, "FINISHED"))


def try_server_command(cfg: Mapping[str, Any], path: Any = "cluster.yaml") -> str:
    """``check-cluster``'s local run (module docstring); the line it adds to "OK"."""
    entry = server_entry(cfg)
    mounts = cfg.get("file_mounts") or {}
    local_env = next((Path(os.path.expanduser(str(v))) for k, v in mounts.items() if str(k).endswith("mlflow.env")), None)
    host = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"
    try:
        with serve_head_command(entry, host=host, mlflow_env=local_env) as served:
            return probe_server(served)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
