"""Issue 15, item 1: a planted credential reaches no output.

Unit tests pin what :func:`lungray.redact.redact` masks. The end-to-end test runs a real sweep
(the sweep CLI in a subprocess, ``-v`` so every debug log is on) against a real ``mlflow
server`` with ``--tracking-uri http://alice:<password>@host`` and a second secret in
``MLFLOW_TRACKING_PASSWORD``; one trial fails with the URI in its error message (as MLflow's
own "API request to http://user:pw@host/... failed" messages do). Then ``lungray mlflow-sync``
replays it from the saved (redacted) state with the credentials from the environment. Every
byte of every output is grepped for both secrets: the console of both commands, the output
folder (``sweep.json``, ``config.yaml``, ``trials.csv``, trial files, Tune's state and
pickles, the report), and the server's store (its sqlite database: params, tags, error tags)
and artifacts (``config.yaml``, ``trials.csv``...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lungray.redact import MASK, is_redacted, redact, strip_credentials, usable_uri

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://alice:s3cret@host:5000/x", "http://alice:***@host:5000/x"),
        ("see https://ghp_abcdef123456@github.com/o/r.git", "see https://***@github.com/o/r.git"),
        ("postgresql://mlflow:pw!x@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("API request to http://u:p@h/api/2.0/mlflow/runs/get failed", "API request to http://u:***@h/api/2.0/mlflow/runs/get failed"),
        ("https://h/a?token=abc123&x=1", "https://h/a?token=***&x=1"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=deadbeef", "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***"),
        ("https://acct.blob.core.windows.net/c?sv=2020&sig=Zm9v", "https://acct.blob.core.windows.net/c?sv=2020&sig=***"),
        ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9vYmFy==;", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=***;"),
        ("key id AKIAIOSFODNN7EXAMPLE in a log", "key id *** in a log"),
        ("http://host:5000 and sqlite:////efs/mlflow.db stay", "http://host:5000 and sqlite:////efs/mlflow.db stay"),
        ("user@example.org and a/b:c stay", "user@example.org and a/b:c stay"),
    ],
)
def test_redact_masks_credentials_and_nothing_else(text, expected):
    assert redact(text, environ={}) == expected


def test_secret_environment_values_are_masked_wherever_they_appear():
    env = {
        "MLFLOW_TRACKING_PASSWORD": "hunter2-hunter2",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEBYaDPLANTED",
        "MY_SERVICE_API_KEY": "sk-live-0123456789",
        "TOKENIZERS_PARALLELISM": "false",  # not a secret, too short to mask anyway
        "RAY_AUTH_TOKEN_PATH": "/home/u/.ray/auth_token",  # a path, not a secret
        "HOME": "/home/u",
    }
    text = "pw hunter2-hunter2 key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY tok FwoGZXIvYXdzEBYaDPLANTED api sk-live-0123456789 false /home/u/.ray/auth_token"
    assert redact(text, environ=env) == f"pw {MASK} key {MASK} tok {MASK} api {MASK} false /home/u/.ray/auth_token"
    # structures: keys and values, lists, tuples; numbers untouched
    got = redact({"tracking": {"tracking_uri": "http://a:b@h"}, "xs": ["http://a:b@h", 3], "t": ("x", 1.5)}, environ={})
    assert got == {"tracking": {"tracking_uri": f"http://a:{MASK}@h"}, "xs": [f"http://a:{MASK}@h", 3], "t": ("x", 1.5)}


def test_a_variable_another_thread_drops_mid_read_does_not_break_redaction(monkeypatch):
    """MLflow's telemetry thread sets and removes ``_MLFLOW_TELEMETRY_SESSION_ID`` while a sweep
    redacts its params: a key-by-key read of os.environ then raised KeyError (seen in a smoke
    sweep). Here the first lookup of any variable removes another, as that thread does."""
    monkeypatch.setenv("LUNGRAY_TEST_SECRET_TOKEN", "planted-secret-value")
    monkeypatch.setenv("LUNGRAY_TEST_GONE", "1")
    real_getitem = os._Environ.__getitem__
    dropped = []

    def racing_getitem(self, key):
        if not dropped:
            dropped.append(key)
            os.environ._data.pop(os.environ.encodekey("LUNGRAY_TEST_GONE"), None)  # what unsetenv in a thread leaves
        return real_getitem(self, key)

    monkeypatch.setattr(os._Environ, "__getitem__", racing_getitem)
    # the old read (for k, v in os.environ.items()) fails under this very race:
    with pytest.raises(KeyError):
        dropped.clear()
        os.environ._data[os.environ.encodekey("LUNGRAY_TEST_GONE")] = b"1"
        dict(os.environ.items())
    dropped.clear()
    os.environ._data[os.environ.encodekey("LUNGRAY_TEST_GONE")] = b"1"
    assert redact("uri http://h/?x=planted-secret-value") == f"uri http://h/?x={MASK}"


def test_a_redacted_uri_reconnects_only_with_credentials_from_the_environment(monkeypatch):
    from lungray.errors import ConfigError

    saved = "http://alice:***@10.0.0.5:5000"
    assert is_redacted(saved) and not is_redacted("http://10.0.0.5:5000")
    assert strip_credentials("http://alice:pw@h:1/p?token=x") == "http://h:1/p"
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match=r"had credentials, which lungray never saves; pass --tracking-uri with them again, or set MLFLOW_TRACKING_USERNAME"):
        usable_uri(saved)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert usable_uri(saved) == "http://10.0.0.5:5000"
    assert usable_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_log_records_are_redacted_on_their_way_out(caplog):
    import logging

    from lungray.redact import RedactingFilter

    handler = logging.StreamHandler()
    records = []
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(RedactingFilter())
    lg = logging.getLogger("lungray.test.redact")
    lg.addHandler(handler)
    try:
        lg.warning("retrying %s", "http://bob:pa55word@h/api")
    finally:
        lg.removeHandler(handler)
    assert records[0].getMessage() == "retrying http://bob:***@h/api"


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------

URI_SECRET = "pl4nted-URI-s3cret-Q7"
ENV_SECRET = "pl4nted-ENV-s3cret-Z9"
#: AWS credentials in the driver's environment: Ray Tune 2.60 copies AWS_ACCESS_KEY_ID,
#: AWS_SECRET_ACCESS_KEY, AWS_SECURITY_TOKEN and AWS_SESSION_TOKEN into every trial actor's
#: runtime_env (ray/tune/execution/class_cache.py, ENV_VARS_TO_PROPAGATE), which Ray's
#: runtime_env_agent.log then writes out in plain text
AWS_SECRET = "pl4ntedAWSs3cretKEYwJalrXUtnFEMIK7MDENG"
AWS_TOKEN = "pl4ntedAWSsessionTOKENFwoGZXIvYXdz"
AWS_KEY_ID = "AKIAPL4NTEDKEY00ID77"

DRIVER = """
import os, sys
from lungray.sweep.cli import main
from lungray.sweep.testing import FakeTrialBody

class Body(FakeTrialBody):
    def __call__(self, trial, data, **kw):
        if trial.train_size == 80:  # as MLflow words it, with the URI the worker was given
            uri = os.environ["MLFLOW_TRACKING_URI"]  # a Ray Train worker's, from its runtime_env
            raise RuntimeError(f"API request to {uri}/api/2.0/mlflow/runs/get failed with exception (simulated)")
        return super().__call__(trial, data, **kw)

URI = sys.argv[1]
sys.exit(main(sys.argv[2:], default_preset="smoke", prog="size_study.py", trial_body=Body(n_max=80)))
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_") and k != "RAY_ADDRESS"}
    env.update({"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}, **extra)
    return env


def _leaks(root: Path, secrets: tuple[str, ...]) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            found += [f"{p.relative_to(root)}: {s}" for s in secrets if s.encode() in data]
    return found


@pytest.fixture
def ray_tmpdir():
    """Ray's temp dir for one sweep: short (Ray's AF_UNIX socket paths under it must stay under
    108 bytes, which pytest's tmp_path is not), removed afterwards."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="lrs", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_planted_credentials_reach_no_console_file_mlflow_store_report_or_ray_log(tmp_path, ray_tmpdir):
    """Issue 23, point 2 besides issue 15's: nothing secret reaches a runtime_env, so Ray's own
    files (``runtime_env_agent.log``, the session's logs and state under ``RAY_TMPDIR``) hold
    neither the MLflow password (from the URI or the environment) nor the AWS keys. Trials run
    through Ray Train here, so both runtime envs are exercised: Tune's trial actors and Train's
    workers (``worker_runtime_env``)."""
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path / "server").start()
    try:
        uri = server.uri.replace("http://", f"http://alice:{URI_SECRET}@")
        out = tmp_path / "runs"
        env = _env(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=ENV_SECRET, RAY_TMPDIR=str(ray_tmpdir),
                   AWS_ACCESS_KEY_ID=AWS_KEY_ID, AWS_SECRET_ACCESS_KEY=AWS_SECRET, AWS_SESSION_TOKEN=AWS_TOKEN)
        args = ["--preset", "smoke", "--set", "models=[simple_cnn]", "--set", "sizes=[40,80]", "--set", "seeds=[0]",
                "--set", "schedule.epochs=2", "--set", "resources.max_failures=0", "--set", "tracking.gradcam=false",
                "--set", "resources.use_ray_train=true",
                "--output", str(out), "--tracking-uri", uri, "--address", "local", "-v"]
        sweep = subprocess.run([sys.executable, "-c", DRIVER, uri, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        console = sweep.stdout + sweep.stderr
        assert sweep.returncode == 1, console[-4000:]  # one trial failed, on purpose
        (exp_dir,) = [p for p in out.iterdir() if (p / "sweep.json").exists()]
        sync = subprocess.run([sys.executable, "-m", "lungray", "-v", "mlflow-sync", str(exp_dir)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        console += sync.stdout + sync.stderr
        assert sync.returncode == 0, sync.stdout[-2000:] + sync.stderr[-3000:]
    finally:
        server.stop()
    (tmp_path / "console.txt").write_text(console)

    # the sites were reached, and wrote the credential masked
    masked = f"http://alice:{MASK}@127.0.0.1:{server.port}"
    assert json.loads((exp_dir / "sweep.json").read_text())["tracking_uri"] == masked
    assert f"tracking_uri: {masked}" in (exp_dir / "config.yaml").read_text()
    assert f"MLflow: {masked} experiment" in console and f"tracking_uri: {masked}" in console
    html = (exp_dir / "report" / "report.html").read_text()
    assert masked in html
    failure = json.loads(next(exp_dir.glob("trials/*/failure.json")).read_text())["error"]
    # the worker was handed the URI without credentials (it reads them from its environment)
    assert f"API request to http://127.0.0.1:{server.port}/api/2.0/mlflow/runs/get failed" in failure
    assert "synced 1 trial(s) to MLflow" in sync.stdout

    # and no byte of any output holds any secret: console, outputs, store, Ray's own files
    secrets = (URI_SECRET, ENV_SECRET, AWS_SECRET, AWS_TOKEN, AWS_KEY_ID)
    assert not [s for s in secrets if s in console]
    assert _leaks(tmp_path, secrets) == []
    ray_files = [p for p in ray_tmpdir.rglob("*") if p.is_file()]
    assert any(p.name == "runtime_env_agent.log" for p in ray_files)  # the file the leak was in
    assert any(p.name.startswith("worker-") for p in ray_files)  # and the trials' own logs
    assert _leaks(ray_tmpdir, secrets) == []

    # the MLflow view is the sweep's: one parent, two trial runs (one FAILED with the masked error)
    import sqlite3

    db = sqlite3.connect(tmp_path / "server" / "mlflow.db")
    params = dict(db.execute("select key, value from params where key = 'tracking.tracking_uri'").fetchall())
    assert params == {"tracking.tracking_uri": masked}
    errors = [v for (v,) in db.execute("select value from tags where key = 'lungray.error'")]
    assert len(errors) == 1 and f"http://127.0.0.1:{server.port}/api/2.0" in errors[0]
    statuses = sorted(s for (s,) in db.execute("select status from runs"))
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]


def test_tune_callbacks_pickled_into_the_experiment_dir_never_hold_the_tracking_uri():
    """Tune pickles its callbacks into ``tune/tuner.pkl``; cloudpickle takes classes built at run
    time by value, with the module globals their methods name (the watch's URI once leaked so)."""
    import ray.cloudpickle as cp

    from lungray.sweep import sync as S
    from lungray.sweep.progress import make_callback

    S.set_watch(f"http://alice:{URI_SECRET}@h:5000")
    try:
        for cb in (S.outage_watch("/tmp/exp"), make_callback(3, echo=print)):
            assert URI_SECRET.encode() not in cp.dumps(cb)
    finally:
        S.set_watch(None)
