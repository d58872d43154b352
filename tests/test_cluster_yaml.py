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
    assert "MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD" in start and "default_permission = NO_PERMISSIONS" in start
    assert "--host $(cat ~/mlflow_host)" in start and "0.0.0.0" not in start
    assert "hostname -I" in " ".join(raw["head_setup_commands"])  # the cluster-internal address


def test_credentials_reach_every_node_from_a_local_file_never_this_one(raw):
    assert raw["file_mounts"]["/home/ray/.lungray/mlflow.env"] == "~/.lungray/mlflow.env"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        ray_start = next(c for c in raw[key] if "ray start" in c)
        assert ". ~/.lungray/mlflow.env" in ray_start and "umask 027" in ray_start  # trials inherit both
    import re

    # every PASSWORD= is a printf slot, a variable or a grep pattern: no literal secret in the file
    assert {v[:1] for v in re.findall(r"PASSWORD=(\S*)", CLUSTER.read_text())} == {"%", "$", "."}


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
            "binds a server to 0.0.0.0",
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
        (lambda c: _cmd(c, "head_start_ray_commands", "--workers 1", "--workers 2"), "SQLite over NFS needs --workers 1"),
        (lambda c: (c.pop("rsync_filter"), c.pop("rsync_exclude")), "uploads the checkout with its git-ignored run folders"),
    ],
    ids=["schema-type", "schema-unknown-key", "no-provider-type", "stopped-nodes", "open-port", "mlflow-0.0.0.0", "no-proxied-artifacts", "no-gpu",
         "ray-default-ssh", "ssh-world", "efs-777", "chmod-a+w", "mlflow-no-auth", "sqlite-2-writers", "uploads-runs"],
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


def test_lungray_check_cluster_refuses_the_template_and_accepts_a_filled_in_copy(tmp_path, capsys, raw):
    from lungray.cli import main

    assert main(["check-cluster", str(CLUSTER)]) == 2
    assert "still has the template's placeholders" in capsys.readouterr().err
    filled = tmp_path / "mine.yaml"
    filled.write_text(CLUSTER.read_text().replace("sg-REPLACE_ME", "sg-0123456789abcdef0").replace("fs-REPLACE_ME", "fs-0123abcd"))
    assert main(["check-cluster", str(filled)]) == 0
    assert f"{filled}: OK" in capsys.readouterr().out
