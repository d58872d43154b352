"""What lungray lets Ray see and write on this machine: no secret in a runtime_env, a private
auth token, a temp dir whose socket paths fit (issue 23, points 1, 2 and 8).

* **Runtime envs are logged.** Ray writes every runtime_env it sets up, environment variables
  included, to ``runtime_env_agent.log`` under ``RAY_TMPDIR`` (0644 in a 0777 directory by
  default) and keeps it in the GCS, where the dashboard shows it. Two things put secrets there:
  a tracking URI with its password handed to workers as ``MLFLOW_TRACKING_URI``, and Ray Tune
  itself, which copies ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SECURITY_TOKEN`` and ``AWS_SESSION_TOKEN`` from the driver's environment into every
  trial actor's runtime_env (Ray 2.60: ``ray/tune/execution/class_cache.py``,
  ``ENV_VARS_TO_PROPAGATE``, read by ``_ActorClassCache.get``). Workers get credentials the way
  MLflow and boto3 read them instead: from their own process environment (a local Ray started
  by the driver inherits the driver's; a cluster node's ``ray start`` sources
  ``~/.lungray/mlflow.env``, see ``cluster.yaml``) or the node's files (``~/.mlflow/credentials``,
  an instance profile). :func:`worker_tracking_uri` strips the URI and
  :func:`no_secrets_in_runtime_env` keeps Tune's copy out for the duration of a sweep.
* **The auth token.** ``ray.init()`` starts a local cluster with token authentication and
  writes the token to ``~/.ray/auth_token`` with the process umask: 0644, so every account on a
  shared machine could read it and submit jobs as the user. :func:`private_auth_token` creates
  it 0600 (Ray's own format) before Ray does, and takes group/other access away from an
  existing one.
* **Socket paths.** Ray's Unix sockets live at
  ``<RAY_TMPDIR>/ray/session_<date>_<pid>/sockets/plasma_store``; a path over the AF_UNIX limit
  (107 bytes on Linux, 103 on macOS) fails deep in Ray with a traceback.
  :func:`check_temp_dir` says so in one line before Ray starts.
* **What a local instance starts.** :data:`LOCAL_RAY_ENV` and :func:`local_init_kwargs`: no
  prestarted worker processes nobody uses, and Ray's dashboard only when asked (a sweep's fixed
  cost on 2 CPUs, ``bench/RESULTS.md``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from lungray.errors import ConfigError

log = logging.getLogger(__name__)

#: What Ray Tune 2.60 copies from the driver's environment into trial runtime_envs that is secret.
TUNE_PROPAGATED_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")

#: ``session_YYYY-MM-DD_HH-MM-SS_ffffff_<pid>`` with a 7-digit pid (Linux's largest pid_max)
_SESSION_NAME_MAX = len("session_2026-01-01_00-00-00_000000_") + 7
#: the longest socket below a session: ``sockets/plasma_store`` plus ``.NN`` when Ray numbers it
_SOCKET_TAIL_MAX = len("/sockets/plasma_store") + 3


#: Environment of the Ray processes a sweep's ``ray.init`` starts on this machine (read by the
#: raylet at start; a user's own setting wins). When the driver connects, Ray 2.60 prestarts one
#: worker process per CPU for it; Tune never uses them: its trial actors carry a runtime_env
#: (``PL_DISABLE_FORK``, ``ray/tune/execution/class_cache.py``) that a default worker does not
#: match, so Ray starts their own workers anyway. On 2 CPUs the two unused processes, each
#: importing Ray, took CPU from the start-up itself and from the trials' first imports.
LOCAL_RAY_ENV = {"RAY_prestart_worker_first_driver": "0"}
#: ``1`` starts Ray's dashboard with a local sweep's Ray instance (off by default: nothing of
#: lungray reads it, and on a full ``ray[default]`` install its modules cost seconds of start-up)
DASHBOARD_ENV = "LUNGRAY_RAY_DASHBOARD"


def local_init_kwargs(environ: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """``ray.init`` options for a local instance the driver starts: the dashboard on request only
    (then Ray's own default: started when its packages are installed, ``ray[default]``).

    >>> local_init_kwargs({})
    {'include_dashboard': False}
    >>> local_init_kwargs({"LUNGRAY_RAY_DASHBOARD": "1"})
    {}
    """
    env = os.environ if environ is None else environ
    return {} if env.get(DASHBOARD_ENV, "").strip().lower() in ("1", "true", "yes", "on") else {"include_dashboard": False}


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def worker_tracking_uri(tracking_uri: str) -> str:
    """The tracking URI to hand to Ray workers: without credentials (they read theirs from
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN`` in their own
    environment, or ``~/.mlflow/credentials``), and without secret query parameters.

    >>> worker_tracking_uri("http://alice:s3cret@10.0.0.5:5000")
    'http://10.0.0.5:5000'
    >>> worker_tracking_uri("sqlite:////efs/lungray/mlflow/mlflow.db")
    'sqlite:////efs/lungray/mlflow/mlflow.db'
    """
    from lungray.redact import strip_credentials

    return strip_credentials(tracking_uri) if "://" in tracking_uri else tracking_uri


@contextlib.contextmanager
def no_secrets_in_runtime_env() -> Iterator[None]:
    """While the block runs (a sweep's ``Tuner.fit``), Ray Tune copies no AWS credential into
    the trial actors' runtime_env; restored afterwards.

    Only Tune's list of names to copy changes: the driver's own environment keeps the keys (its
    MLflow or S3 clients may need them), and workers of a local Ray have them anyway, inherited
    from the driver at ``ray.init``.
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # pragma: no cover - no Ray Tune: nothing copies anything
        yield
        return
    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if not isinstance(names, set):  # pragma: no cover - another Ray: the planted-secret test says
        yield
        return
    removed = names & set(TUNE_PROPAGATED_SECRETS)
    names -= removed
    try:
        yield
    finally:
        names |= removed


def check_temp_dir(environ: Optional[Mapping[str, str]] = None, platform: str = sys.platform) -> None:
    """Refuse, in one line, a Ray temp dir whose socket paths would pass the AF_UNIX limit.

    Ray takes ``RAY_TMPDIR``, else (Linux) ``TMPDIR``, else ``/tmp``, and adds ``ray/`` and the
    session folder (``ray/_common/utils.py``, ``get_default_ray_temp_dir``; ``_private/node.py``).
    """
    env = os.environ if environ is None else environ
    name = "RAY_TMPDIR" if env.get("RAY_TMPDIR") else ("TMPDIR" if platform.startswith("linux") and env.get("TMPDIR") else None)
    if name is None:
        return
    base = env[name]
    limit = (104 if platform.startswith("darwin") else 108) - 1
    longest = len(os.path.join(base, "ray").encode()) + 1 + _SESSION_NAME_MAX + _SOCKET_TAIL_MAX
    if longest > limit:
        fits = limit - (longest - len(base.encode()))
        raise ConfigError(
            f"{name}={base} is too long for Ray: its socket paths under it would reach {longest} bytes, over the "
            f"{limit}-byte limit of a Unix socket path; set {name} to a folder of at most {fits} characters "
            f"(e.g. export {name}=/tmp/ray_$USER)"
        )


def private_auth_token(path: Optional[Path] = None, *, create: bool = True) -> Optional[Path]:
    """``~/.ray/auth_token`` readable by its owner only (created 0600 in Ray's format when
    missing and ``create``: a driver about to start a local Ray, which would write it itself).

    Returns the token file, or ``None`` when there is none (``RAY_AUTH_TOKEN`` carries the
    token, ``RAY_AUTH_MODE`` turns token authentication off, or nothing to create).
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    p = Path(path or os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not p.exists():
        if not create or (os.environ.get("RAY_AUTH_TOKEN_PATH") and path is None):
            return None  # a path the user named that does not exist: Ray's own error says so
        import secrets

        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another driver wrote it between the check and here
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))  # Ray's generate_new_authentication_token
            return p
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077 and p.stat().st_uid == os.getuid():
        p.chmod(mode & 0o700)
        log.warning("%s was readable by other accounts (mode %04o); made it %04o", p, mode, mode & 0o700)
    return p
