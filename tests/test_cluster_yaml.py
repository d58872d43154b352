"""``cluster.yaml`` passes Ray's own config validation and lungray's cluster rules; broken copies do not."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lungray.errors import ConfigError
from lungray.sweep.cluster import fake_cluster_config, validate_cluster_yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_cluster_yaml_passes_rays_prepare_and_validate_config():
    prepared = validate_cluster_yaml(CLUSTER, allow_placeholders=True)  # the template: ids to fill in
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"]
    assert prepared["provider"]["cache_stopped_nodes"] is False
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert types[head]["resources"].get("GPU", 0) == 0  # a CPU head
    gpu = {k: v for k, v in types.items() if k != head}
    assert sorted(v["resources"]["GPU"] for v in gpu.values()) == [1, 4]  # single-GPU and multi-GPU (DDP) types
    assert all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in gpu.values())  # autoscaled from zero
    # prepare_config merged the common setup into head and worker setup
    assert any("pip install" in c and "lungray" in c for c in prepared["worker_setup_commands"])


def test_cluster_yaml_installs_lungray_with_dicom_decoders_on_a_cuda_image(raw):
    setup = "\n".join(raw["setup_commands"])
    assert "pip install" in setup and "/home/ray/lungray" in setup and "ray[tune,train,default]==" in setup
    for mod in ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle"):
        assert mod in setup
    assert "gpu" in raw["docker"]["image"] and raw["docker"]["image"].startswith("rayproject/ray:")
    assert all(t["node_config"]["ImageId"] == "latest_dlami" for t in raw["available_node_types"].values())


def test_mlflow_server_on_the_head_is_sql_backed_proxied_authenticated_and_internal(raw):
    start = " ".join(raw["head_start_ray_commands"])
    assert "mlflow server --app-name basic-auth" in start and "--serve-artifacts" in start
    # PostgreSQL when the user names one, else SQLite on EFS with ONE writing process (its NFS limit)
    assert "--backend-store-uri ${LUNGRAY_MLFLOW_DB:-sqlite:////efs/lungray/mlflow/mlflow.db}" in start and "--workers 1" in start
    assert "psycopg2-binary" in " ".join(raw["head_setup_commands"])
    assert "default_permission = NO_PERMISSIONS" in start
    assert "--host $(cat ~/mlflow_host)" in start and "0.0.0.0" not in start
    assert "hostname -I" in " ".join(raw["head_setup_commands"])  # the cluster-internal address
    # issue 23: MLflow 3 answers a Host header it does not know with 403; the head's own address is listed
    assert '--allowed-hosts "$(cat ~/mlflow_host):5000,localhost:*,127.0.0.1:*"' in start
    # the admin is made on the head (its password never in mlflow.env), the runs user is not an admin,
    # and the auth app's secret key comes from the same head-only file
    assert "lungray mlflow-auth --server-env ~/.lungray/mlflow_server.env || exit 1" in start
    assert ". ~/.lungray/mlflow_server.env" in start and "MLFLOW_AUTH_ADMIN_PASSWORD" not in start
    assert "admin_username = lungray-admin" in start and "MLFLOW_TRACKING_USERNAME=lungray-runs" in CLUSTER.read_text()
    assert "auth_cache_ttl_seconds = 300" in start  # one scrypt check per user, not per logged metric
    assert '"mlflow[auth]==' in " ".join(raw["setup_commands"])  # Flask-WTF, without which the auth app does not start
    # said plainly: basic auth over plain HTTP stays inside the VPC and the SSH tunnel
    assert "plain HTTP" in CLUSTER.read_text() and "TLS" in CLUSTER.read_text()


def test_ray_runs_with_token_authentication_from_a_private_token_on_every_node(raw):
    assert raw["file_mounts"]["/home/ray/.lungray/ray_auth_token"] == "~/.lungray/ray_auth_token"
    assert "openssl rand -hex 32 > ~/.lungray/ray_auth_token" in CLUSTER.read_text() and "umask 077" in CLUSTER.read_text()
    assert any("chmod 0600 ~/.lungray/mlflow.env ~/.lungray/ray_auth_token" in c for c in raw["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        ray_start = next(c for c in raw[key] if "ray start" in c)
        assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=~/.lungray/ray_auth_token" in ray_start


def test_credentials_reach_every_node_from_a_local_file_never_this_one(raw):
    assert raw["file_mounts"]["/home/ray/.lungray/mlflow.env"] == "~/.lungray/mlflow.env"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        ray_start = next(c for c in raw[key] if "ray start" in c)
        assert ". ~/.lungray/mlflow.env" in ray_start and "umask 027" in ray_start  # trials inherit both
    import re

    # every PASSWORD= is a printf slot or a grep pattern: no literal secret in the file
    assert {v[:1] for v in re.findall(r"PASSWORD=(\S*)", CLUSTER.read_text())} == {"%", "."}


def test_ssh_only_from_the_users_group_never_rays_open_default(raw):
    # Ray's AWS provider adds SSH from 0.0.0.0/0 to every group it creates
    # (ray/autoscaler/_private/aws/config.py, _create_default_ssh_inbound_rules): every node type
    # names the user's group instead, and no provider-level group is configured
    assert "security_group" not in raw["provider"]
    assert all(t["node_config"]["SecurityGroupIds"] == ["sg-REPLACE_ME"] for t in raw["available_node_types"].values())
    assert "--port 22" in CLUSTER.read_text() and "--cidr <your public IP>/32" in CLUSTER.read_text()


def test_the_shared_volume_is_the_cluster_users_alone(raw):
    init = " ".join(raw["initialization_commands"])
    assert "chmod 777" not in init and "install -d -m 0750 -o 1000 -g 1000 /efs/lungray" in init and "chmod 0755 /efs" in init
    setup = " ".join(raw["setup_commands"])
    assert "umask 027" in setup and "/efs/lungray/runs" in setup and "chmod 0700 /efs/lungray/mlflow" in setup


def test_run_folders_are_not_uploaded_to_the_nodes(raw, tmp_path):
    assert raw["rsync_filter"] == [".gitignore"]
    assert {"**/lungray_runs", "**/lungray_runs/**", "**/*.db"} <= set(raw["rsync_exclude"])
    # what Ray passes to rsync excludes a lungray_runs/ folder next to the code
    import shutil
    import subprocess

    from ray.autoscaler._private.command_runner import SSHCommandRunner

    if shutil.which("rsync") is None:
        pytest.skip("needs rsync")
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "lungray").mkdir(parents=True)
    (src / "lungray" / "x.py").write_text("x")
    (src / "lungray_runs" / "s").mkdir(parents=True)
    (src / "lungray_runs" / "s" / "tuner.pkl").write_text("state")
    (src / "mlflow.db").write_text("db")
    (src / ".gitignore").write_text("/lungray_runs/\n*.db\n")
    args = SSHCommandRunner._create_rsync_filter_args(None, {"rsync_exclude": raw["rsync_exclude"], "rsync_filter": raw["rsync_filter"]})
    subprocess.run(["rsync", "-a", *args, f"{src}/", str(dst)], check=True)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == [".gitignore", "lungray", "lungray/x.py"]


def test_a_config_still_holding_the_templates_placeholders_is_refused():
    with pytest.raises(ConfigError, match=r"still has the template's placeholders fs-REPLACE_ME, sg-REPLACE_ME; put your security group and EFS ids there"):
        validate_cluster_yaml(CLUSTER)


def test_shared_storage_is_mounted_for_cache_runs_and_mlflow(raw):
    init = " ".join(raw["initialization_commands"])
    assert "mount -t nfs4" in init and "efs" in init and "/efs" in init
    assert "--volume /efs:/efs" in raw["docker"]["run_options"]


def _cmd(c, key, old, new):
    c[key] = [s.replace(old, new) for s in c[key]]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c.__setitem__("max_workers", "lots"), "Ray rejects the cluster config.*'lots' is not of type 'integer'"),
        (lambda c: c.__setitem__("worker_max", 3), "Ray rejects the cluster config.*'worker_max' was unexpected"),
        (lambda c: c["provider"].pop("type"), "Ray rejects the cluster config"),
        (lambda c: c["provider"].__setitem__("cache_stopped_nodes", True), "cache_stopped_nodes must be false"),
        (
            lambda c: c["provider"].__setitem__(
                "security_group", {"GroupName": "x", "IpPermissions": [{"FromPort": 5000, "ToPort": 5000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
            ),
            r"opens ports \(5000, 5000\); inbound must be SSH \(22\) only",
        ),
        (
            lambda c: c.__setitem__("head_start_ray_commands", [s.replace("$(cat ~/mlflow_host)", "0.0.0.0") for s in c["head_start_ray_commands"]]),
            r"binds a server to 0.0.0.0 \(mlflow server \(--host\): every interface\)",
        ),
        (
            lambda c: c.__setitem__("head_start_ray_commands", [s.replace("--serve-artifacts", "") for s in c["head_start_ray_commands"]]),
            "--serve-artifacts",
        ),
        (lambda c: [t.__setitem__("resources", {"CPU": 4}) for k, t in c["available_node_types"].items() if k != "head"], "no GPU worker type"),
        (lambda c: c["available_node_types"]["gpu_1x"]["node_config"].pop("SecurityGroupIds"), r"gpu_1x.node_config has no SecurityGroupIds: the group Ray would create opens SSH to 0.0.0.0/0"),
        (
            lambda c: c["provider"].__setitem__("security_group", {"GroupName": "x", "IpPermissions": [{"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
            "opens SSH to the whole internet",
        ),
        (lambda c: _cmd(c, "initialization_commands", "sudo chmod 0755 /efs", "sudo chmod 777 /efs"), "makes a folder writable by every user.*--resume unpickles"),
        (lambda c: _cmd(c, "setup_commands", "chmod 0700", "chmod -R a+rwx"), "makes a folder writable by every user"),
        (lambda c: _cmd(c, "head_start_ray_commands", "--app-name basic-auth", ""), "without authentication; run it with --app-name basic-auth"),
        (lambda c: _cmd(c, "head_start_ray_commands", "--app-name basic-auth", "--app-name=basic"), "without authentication"),
        (lambda c: _cmd(c, "head_start_ray_commands", "--workers 1", "--workers 2"), "SQLite over NFS needs --workers 1"),
        (lambda c: (c.pop("rsync_filter"), c.pop("rsync_exclude")), "uploads the checkout with its git-ignored run folders"),
    ],
    ids=["schema-type", "schema-unknown-key", "no-provider-type", "stopped-nodes", "open-port", "mlflow-0.0.0.0", "no-proxied-artifacts", "no-gpu",
         "ray-default-ssh", "ssh-world", "efs-777", "chmod-a+w", "mlflow-no-auth", "mlflow-other-app", "sqlite-2-writers", "uploads-runs"],
)
def test_broken_copies_are_rejected_with_one_line(tmp_path, raw, mutate, match):
    cfg = copy.deepcopy(raw)
    mutate(cfg)
    with pytest.raises(ConfigError, match=match) as e:
        validate_cluster_yaml(_write(tmp_path, cfg), allow_placeholders=True)
    assert "\n" not in str(e.value) and "broken.yaml" in str(e.value)


def test_fake_cluster_config_mirrors_the_node_types_and_passes_ray_validation(raw):
    from ray.autoscaler._private.util import validate_config

    fake = fake_cluster_config(CLUSTER, cpus_per_worker_node=1, gcs_address="127.0.0.1:6390")
    validate_config(fake)
    workers = {k for k in raw["available_node_types"] if k != raw["head_node_type"]}
    assert set(fake["available_node_types"]) == workers | {"ray.head.default"}
    assert all(fake["available_node_types"][k]["resources"]["CPU"] == 1 for k in workers)
    assert fake["provider"]["type"] == "fake_multinode" and fake["provider"]["gcs_address"] == "127.0.0.1:6390"
    assert fake["max_workers"] == len(workers)


@pytest.mark.slow
def test_lungray_check_cluster_refuses_the_template_and_serves_a_filled_in_copys_mlflow_command(tmp_path, capsys, raw, monkeypatch):
    """check-cluster runs the head's MLflow server command here (issue 23, point 1): with the
    command as it was before issue 23 (no --allowed-hosts, the admin = the runs user, no
    secret key) the local run fails; with cluster.yaml's it serves and says so."""
    from lungray.cli import main
    from lungray.sweep.cluster_server import probe_server, serve_head_command, server_entry

    monkeypatch.setenv("HOME", str(tmp_path))
    # the user's own mlflow.env: its runs user is used; its LUNGRAY_MLFLOW_DB (a production database) never is
    (tmp_path / ".lungray").mkdir()
    (tmp_path / ".lungray" / "mlflow.env").write_text(
        "MLFLOW_TRACKING_USERNAME=my-runs\nMLFLOW_TRACKING_PASSWORD=my-runs-password-01\n"
        "LUNGRAY_MLFLOW_DB=postgresql://nobody:x@127.0.0.1:9/none\n")
    assert main(["check-cluster", "--no-server", str(CLUSTER)]) == 2
    assert "still has the template's placeholders" in capsys.readouterr().err
    filled = tmp_path / "mine.yaml"
    filled.write_text(CLUSTER.read_text().replace("sg-REPLACE_ME", "sg-0123456789abcdef0").replace("fs-REPLACE_ME", "fs-0123abcd"))
    assert main(["check-cluster", str(filled)]) == 0
    out = capsys.readouterr().out
    assert f"{filled}: OK" in out and "its MLflow server command served here at 127.0.0.2:" in out
    assert "runs user 'my-runs' not an admin" in out and "requests without credentials refused" in out

    # the pre-issue-23 command, run the same way (the static rules would refuse it first):
    old = (
        "umask 077; set -a; . ~/.lungray/mlflow.env; set +a; "
        "printf '[mlflow]\\ndefault_permission = NO_PERMISSIONS\\ndatabase_uri = sqlite:////efs/lungray/mlflow/basic_auth.db\\n' > ~/mlflow_auth.ini; "
        "MLFLOW_AUTH_CONFIG_PATH=~/mlflow_auth.ini MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_TRACKING_USERNAME "
        "MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY=x "
        "nohup mlflow server --app-name basic-auth --backend-store-uri sqlite:////efs/lungray/mlflow/mlflow.db "
        "--artifacts-destination /efs/lungray/mlflow/artifacts --serve-artifacts --host $(cat ~/mlflow_host) --port 5000 --workers 1 "
        "> ~/mlflow_server.log 2>&1 & echo $! > ~/mlflow_server.pid"
    )
    assert "--allowed-hosts" not in old and server_entry({"head_start_ray_commands": [old]}) == old
    with serve_head_command(old, host="127.0.0.2", timeout=300) as head:
        with pytest.raises(ConfigError, match=r"refuses its own address as Host \(127.0.0.2:\d+\): 403 Invalid Host header"):
            probe_server(head)


# ---------------------------------------------------------------------------------------------
# issue 23, point 3: what the commands do, not how they are spelled (a test per bypass)
# ---------------------------------------------------------------------------------------------

WORLD_WRITABLE = "makes a folder writable by every user"
BYPASSES = {
    # the reproductions
    "install -d -m 0777": ("initialization_commands", "sudo install -d -m 0777 -o 1000 -g 1000 /efs/lungray", WORLD_WRITABLE),
    "mkdir -m 777": ("setup_commands", "mkdir -m 777 /efs/lungray/runs", WORLD_WRITABLE),
    "umask 000": ("setup_commands", "umask 000 && mkdir -p /efs/lungray/runs", "lets every user write the files and folders created after it"),
    "dashboard-host=::": ("head_start_ray_commands", "ray start --head --dashboard-host=:: --port=6380", r"binds a server to :: \(ray dashboard"),
    "mlflow --host ::": ("head_start_ray_commands", "nohup mlflow ui --host :: --port 5001 &", r"binds a server to :: \(mlflow server"),
    # and their relatives
    "mkdir --mode=a+rwx": ("setup_commands", "mkdir --mode=a+rwx /efs/lungray/x", WORLD_WRITABLE),
    "mkdir -pm 1777": ("setup_commands", "mkdir -pm 1777 /efs/lungray/x", WORLD_WRITABLE),
    "install -dm0777": ("initialization_commands", "sudo install -dm0777 /efs/lungray", WORLD_WRITABLE),
    "chmod o+w": ("setup_commands", "chmod o+w /efs/lungray/runs", WORLD_WRITABLE),
    "chmod 1777": ("setup_commands", "chmod 1777 /efs/lungray/runs", WORLD_WRITABLE),
    "chmod under sudo -u": ("initialization_commands", "sudo -u root chmod -R a=rwx /efs/lungray", WORLD_WRITABLE),
    "chmod in bash -c": ("setup_commands", "bash -c 'chmod 0777 /efs/lungray/runs'", WORLD_WRITABLE),
    "chmod in find -exec": ("setup_commands", "find /efs/lungray -type d -exec chmod 777 {} +", WORLD_WRITABLE),
    "chmod of a variable": ("setup_commands", "M=0777; chmod $M /efs/lungray/runs", WORLD_WRITABLE),
    "setfacl o::rwx": ("setup_commands", "setfacl -m o::rwx /efs/lungray/runs", WORLD_WRITABLE),
    "umask -S": ("setup_commands", "umask -S u=rwx,g=rwx,o=rwx; mkdir -p /efs/lungray/x", "lets every user write"),
    "umask 0 in ray start": ("worker_start_ray_commands", "umask 0; RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379", "lets every user write"),
    "dashboard-host 0.0.0.0 as 2 words": ("head_start_ray_commands", "ray start --head --dashboard-host 0.0.0.0", r"binds a server to 0.0.0.0"),
    "dashboard on an internal address": ("head_start_ray_commands", "ray start --head --dashboard-host=10.0.0.5", r"binds a server to 10.0.0.5"),
    "mlflow -h 0": ("head_start_ray_commands", "mlflow server -h 0 --port 5001", r"binds a server to 0 \(mlflow server"),
    "mlflow --host=[::]": ("head_start_ray_commands", "mlflow server --host=[::]", r"binds a server to \[::\]"),
    "mlflow host via a variable": ("head_start_ray_commands", "H=0.0.0.0; mlflow server --host $H", "binds a server to 0.0.0.0"),
    "mlflow host via a file": ("head_setup_commands", "echo 0.0.0.0 > ~/h; mlflow ui --host $(cat ~/h)", "binds a server to 0.0.0.0"),
    "mlflow gunicorn bind": ("head_start_ray_commands", "mlflow server --gunicorn-opts '--bind 0.0.0.0:5001'", "binds a server to 0.0.0.0"),
    "mlflow on a public address": ("head_start_ray_commands", "mlflow ui --host 8.8.8.8", r"binds a server to 8.8.8.8 \(mlflow server \(--host\): a public address"),
    "ssh 0/1 + 128/1 in commands": (
        "initialization_commands",
        "aws ec2 authorize-security-group-ingress --group-id sg-1 --protocol tcp --port 22 --cidr 0.0.0.0/1 && "
        "aws ec2 authorize-security-group-ingress --group-id sg-1 --protocol tcp --port 22 --cidr 128.0.0.0/1",
        "opens SSH to the whole internet",
    ),
    "ssh: two /8s, each accepted alone": (
        "initialization_commands",
        "aws ec2 authorize-security-group-ingress --group-id sg-1 --ip-permissions 'IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8}]'; "
        "aws ec2 authorize-security-group-ingress --group-id sg-1 --protocol tcp --port 22 --cidr 11.0.0.0/8",
        r"together admit 33,554,432 IPv4 addresses",
    ),
    "ray start without token auth": ("worker_start_ray_commands", "umask 027; ray start --address=$RAY_HEAD_IP:6379", "runs without RAY_AUTH_MODE=token"),
}


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_each_insecure_variant_is_refused_for_what_it_does(tmp_path, raw, name):
    key, line, match = BYPASSES[name]
    cfg = copy.deepcopy(raw)
    cfg[key] = list(cfg.get(key) or []) + [line]
    with pytest.raises(ConfigError, match=match) as e:
        validate_cluster_yaml(_write(tmp_path, cfg), allow_placeholders=True)
    assert "\n" not in str(e.value) and (key in str(e.value) or "authorize-security-group-ingress" in str(e.value))


def _ssh_group(*cidrs: str, v6: tuple[str, ...] = ()) -> dict:
    return {"GroupName": "x", "IpPermissions": [{"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp",
                                                 "IpRanges": [{"CidrIp": c} for c in cidrs], "Ipv6Ranges": [{"CidrIpv6": c} for c in v6]}]}


@pytest.mark.parametrize(
    "group, refused",
    [
        (_ssh_group("0.0.0.0/1", "128.0.0.0/1"), True),  # the split of 0.0.0.0/0
        (_ssh_group("0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"), True),
        (_ssh_group("10.0.0.0/7"), True),  # 33 M addresses, more than a /8
        (_ssh_group("10.0.0.0/8", "11.0.0.0/8"), True),  # each accepted alone, not together
        (_ssh_group(v6=("::/1", "8000::/1")), True),
        (_ssh_group("not-a-cidr"), True),
        (_ssh_group("203.0.113.7/32"), False),  # the template's "your public IP"/32
        (_ssh_group("198.51.100.0/24", "203.0.113.0/24"), False),
        (_ssh_group("10.0.0.0/8"), False),  # exactly a /8: a campus or VPN range, accepted
        (_ssh_group(v6=("2001:db8::/48",)), False),
    ],
    ids=["0/1+128/1", "four-/2", "/7", "two-/8", "v6-halves", "unreadable", "/32", "two-/24", "/8", "v6-/48"],
)
def test_ssh_ranges_are_judged_by_the_addresses_they_admit_together(tmp_path, raw, group, refused):
    cfg = copy.deepcopy(raw)
    cfg["provider"]["security_group"] = group
    if refused:
        with pytest.raises(ConfigError, match="opens SSH to the whole internet"):
            validate_cluster_yaml(_write(tmp_path, cfg), allow_placeholders=True)
    else:
        validate_cluster_yaml(_write(tmp_path, cfg), allow_placeholders=True)


@pytest.mark.parametrize(
    "key, line",
    [
        ("setup_commands", "chmod 0750 /efs/lungray && chmod u+w,g-w /efs/lungray/runs"),
        ("setup_commands", "umask 027 && mkdir -m 0750 -p /efs/lungray/x && install -d -m 2750 /efs/lungray/y"),
        ("setup_commands", "chmod +w ~/notes.txt"),  # with the login umask 022: u+w only
        ("setup_commands", "echo 'chmod 777 / is a joke' > ~/readme"),  # text, not a command
        ("head_start_ray_commands", "mlflow ui --host 127.0.0.1 --port 5001 &"),
        ("head_setup_commands", "setfacl -m u:1001:rx /efs/lungray"),
    ],
)
def test_safe_commands_that_look_alike_pass(tmp_path, raw, key, line):
    cfg = copy.deepcopy(raw)
    cfg[key] = list(cfg.get(key) or []) + [line]
    validate_cluster_yaml(_write(tmp_path, cfg), allow_placeholders=True)


@pytest.mark.parametrize(
    "old, new, match",
    [
        ('--allowed-hosts "$(cat ~/mlflow_host):5000,localhost:*,127.0.0.1:*"', "",
         r"without --allowed-hosts naming that address: MLflow 3 answers every API call from the cluster with 403 'Invalid Host header'"),
        ('--allowed-hosts "$(cat ~/mlflow_host):5000,localhost:*,127.0.0.1:*"', "--allowed-hosts '*'", r"--allowed-hosts \*' turns off"),
        ("lungray mlflow-auth --server-env ~/.lungray/mlflow_server.env || exit 1;",
         "MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_TRACKING_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD true;",
         "the MLflow admin is the user of mlflow.env"),
        ("lungray mlflow-auth --server-env ~/.lungray/mlflow_server.env || exit 1;", "", "needs MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ],
    ids=["no-allowed-hosts", "allowed-hosts-star", "admin-is-runs-user", "no-mlflow-auth"],
)
def test_the_mlflow_server_command_must_be_one_that_serves_the_cluster(tmp_path, raw, old, new, match):
    cfg = copy.deepcopy(raw)
    _cmd(cfg, "head_start_ray_commands", old, new)
    assert any(new in c for c in cfg["head_start_ray_commands"])
    with pytest.raises(ConfigError, match=match):
        validate_cluster_yaml(_write(tmp_path, cfg), allow_placeholders=True)
