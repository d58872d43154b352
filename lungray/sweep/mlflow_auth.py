"""The cluster head's MLflow users: an admin that never leaves the head, and the non-admin user
every node's trials write as (issue 23, point 1).

``cluster.yaml`` copies ``~/.lungray/mlflow.env`` (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) to
every node, GPU workers included: whatever runs there (trial code, image decoders reading the
dataset) can read it. So that user must not be MLflow's admin, who can create users and grant
any permission. Before the head starts ``mlflow server --app-name basic-auth``,
``lungray mlflow-auth`` (:func:`setup_head`):

1. keeps the server's own secrets in a head-only file (``--server-env``, mode 0600): the admin
   password and ``MLFLOW_FLASK_SERVER_SECRET_KEY`` (the auth app's CSRF key, which MLflow 3
   refuses to start without), each generated once and kept across restarts;
2. writes both users into the auth database named by ``MLFLOW_AUTH_CONFIG_PATH``'s ini: the
   admin (``admin_username``) with that password, and the runs user from the environment,
   created or reset to the password of ``mlflow.env``, never an admin. Rotating the runs
   password is editing ``mlflow.env`` and ``ray up`` again.

The auth app's ``default_permission = NO_PERMISSIONS`` then gives the runs user exactly what it
creates (MLflow grants MANAGE on an experiment to its creator) and nothing else.

Basic auth sends the password with every request in the clear: between the nodes it travels
over plain HTTP inside the VPC (the security group admits only the cluster's own nodes), and from
a laptop only through the SSH tunnel. Put a TLS proxy in front of the server before opening it
to anything else.
"""

from __future__ import annotations

import configparser
import os
import secrets
from pathlib import Path
from typing import Callable, Mapping, Optional

from lungray.errors import ConfigError

ADMIN_PASSWORD = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"
RUNS_USER, RUNS_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
MIN_PASSWORD = 12  # MLflow's own rule (mlflow/utils/validation.py, _validate_password)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, blank lines and an ``export`` prefix allowed)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.removeprefix("export ").split("=", 1)
        out[k.strip()] = v.strip().strip("'\"")
    return out


def server_secrets(path: Path) -> dict[str, str]:
    """The head-only server secrets in ``path`` (0600), generated where missing, kept otherwise."""
    p = Path(path).expanduser()
    old = read_env_file(p) if p.exists() else {}
    new = {ADMIN_PASSWORD: old.get(ADMIN_PASSWORD) or secrets.token_hex(24), SECRET_KEY: old.get(SECRET_KEY) or secrets.token_hex(32)}
    if new != {k: old.get(k) for k in new}:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in new.items()))
        os.replace(tmp, p)
    os.chmod(p, 0o600)
    return new


def auth_config(ini: Path, environ: Mapping[str, str]) -> tuple[str, str]:
    """``(database_uri, admin_username)`` of the auth app's ini (the admin name from
    ``MLFLOW_AUTH_ADMIN_USERNAME`` when set, as MLflow reads it)."""
    p = Path(ini).expanduser()
    if not p.is_file():
        raise ConfigError(f"{p}: no such file; MLFLOW_AUTH_CONFIG_PATH must name the auth app's ini ([mlflow] database_uri, admin_username)")
    cp = configparser.ConfigParser()
    cp.read(p)
    if "mlflow" not in cp or not cp["mlflow"].get("database_uri"):
        raise ConfigError(f"{p}: needs an [mlflow] section with database_uri (the auth app's user database)")
    admin = environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or cp["mlflow"].get("admin_username") or "admin"
    return cp["mlflow"]["database_uri"], admin


def setup_head(server_env: Path, environ: Optional[Mapping[str, str]] = None, echo: Callable[[str], None] = print) -> None:
    """Write the server's secrets and both users (module docstring); one line per refusal."""
    env = os.environ if environ is None else environ
    ini = env.get("MLFLOW_AUTH_CONFIG_PATH")
    if not ini:
        raise ConfigError("MLFLOW_AUTH_CONFIG_PATH is not set: point it at the basic-auth app's ini, as cluster.yaml's head_start_ray_commands do")
    db_uri, admin = auth_config(Path(ini), env)
    runs, runs_pw = env.get(RUNS_USER, ""), env.get(RUNS_PASSWORD, "")
    if not runs or not runs_pw:
        raise ConfigError(f"{RUNS_USER} and {RUNS_PASSWORD} must be set (source ~/.lungray/mlflow.env first): the user the trials write as")
    if runs == admin:
        raise ConfigError(
            f"{RUNS_USER}={runs} is the MLflow admin's name; every node holds that user's password, so name it differently "
            f"(e.g. lungray-runs) in ~/.lungray/mlflow.env"
        )
    if len(runs_pw) < MIN_PASSWORD:
        raise ConfigError(f"{RUNS_PASSWORD} is {len(runs_pw)} characters; MLflow needs at least {MIN_PASSWORD} (e.g. openssl rand -hex 24)")
    sec = server_secrets(server_env)
    if sec[ADMIN_PASSWORD] == runs_pw:
        raise ConfigError(f"{RUNS_PASSWORD} equals the admin password of {server_env}; give the runs user its own")
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    if db_uri.startswith("sqlite:///"):
        Path(db_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore()
    store.init_db(db_uri)
    for name, pw, is_admin in ((admin, sec[ADMIN_PASSWORD], True), (runs, runs_pw, False)):
        if store.has_user(name, use_primary=True):
            store.update_user(name, password=pw, is_admin=is_admin)
        else:
            store.create_user(name, pw, is_admin=is_admin)
    echo(f"MLflow users: admin '{admin}' (its password stays on this node, in {server_env}); runs user '{runs}' (not an admin)")
