"""``lungray mlflow-auth`` (issue 23, point 1): the head's admin stays on the head, the runs user
every node holds is never an admin, and the auth app's secret key exists before the server starts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lungray.errors import ConfigError
from lungray.sweep.mlflow_auth import ADMIN_PASSWORD, SECRET_KEY, read_env_file, setup_head


def _ini(tmp_path: Path, admin: str = "lungray-admin") -> Path:
    p = tmp_path / "auth.ini"
    p.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{tmp_path / 'efs' / 'basic_auth.db'}\n"
                 f"admin_username = {admin}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return p


def _store(tmp_path: Path):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    s = SqlAlchemyStore()
    s.init_db(f"sqlite:///{tmp_path / 'efs' / 'basic_auth.db'}")
    return s


def test_the_admin_lives_on_the_head_and_the_runs_user_is_not_an_admin(tmp_path):
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(_ini(tmp_path)), "MLFLOW_TRACKING_USERNAME": "lungray-runs",
           "MLFLOW_TRACKING_PASSWORD": "runs-password-0001"}
    server_env = tmp_path / "home" / ".lungray" / "mlflow_server.env"
    lines: list[str] = []
    setup_head(server_env, env, echo=lines.append)
    assert lines == [f"MLflow users: admin 'lungray-admin' (its password stays on this node, in {server_env}); "
                     "runs user 'lungray-runs' (not an admin)"]
    assert stat.S_IMODE(server_env.stat().st_mode) == 0o600
    sec = read_env_file(server_env)
    assert len(sec[ADMIN_PASSWORD]) == 48 and len(sec[SECRET_KEY]) == 64
    s = _store(tmp_path)
    assert s.get_user("lungray-admin").is_admin and not s.get_user("lungray-runs").is_admin
    assert s.authenticate_user("lungray-admin", sec[ADMIN_PASSWORD]) and s.authenticate_user("lungray-runs", "runs-password-0001")

    # a restart keeps the head's secrets; a new runs password (mlflow.env edited) takes effect;
    # a runs user someone made an admin is demoted
    s.update_user("lungray-runs", is_admin=True)
    setup_head(server_env, dict(env, MLFLOW_TRACKING_PASSWORD="runs-password-0002"), echo=lines.append)
    assert read_env_file(server_env) == sec
    s = _store(tmp_path)
    assert s.authenticate_user("lungray-runs", "runs-password-0002") and not s.authenticate_user("lungray-runs", "runs-password-0001")
    assert not s.get_user("lungray-runs").is_admin


@pytest.mark.parametrize(
    "change, match",
    [
        ({"MLFLOW_TRACKING_USERNAME": "lungray-admin"}, r"MLFLOW_TRACKING_USERNAME=lungray-admin is the MLflow admin's name; every node holds"),
        ({"MLFLOW_TRACKING_PASSWORD": "short"}, r"MLFLOW_TRACKING_PASSWORD is 5 characters; MLflow needs at least 12"),
        ({"MLFLOW_TRACKING_PASSWORD": ""}, r"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set \(source ~/.lungray/mlflow.env first\)"),
        ({"MLFLOW_AUTH_CONFIG_PATH": ""}, r"MLFLOW_AUTH_CONFIG_PATH is not set"),
        ({"MLFLOW_AUTH_CONFIG_PATH": "/nonexistent/auth.ini"}, r"/nonexistent/auth.ini: no such file"),
    ],
    ids=["runs-is-admin", "short-password", "no-credentials", "no-ini", "missing-ini"],
)
def test_refusals_are_one_line(tmp_path, change, match):
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(_ini(tmp_path)), "MLFLOW_TRACKING_USERNAME": "lungray-runs",
           "MLFLOW_TRACKING_PASSWORD": "runs-password-0001", **change}
    with pytest.raises(ConfigError, match=match) as e:
        setup_head(tmp_path / "server.env", env, echo=lambda s: None)
    assert "\n" not in str(e.value)
