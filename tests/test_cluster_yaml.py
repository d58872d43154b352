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
    prepared = validate_cluster_yaml(CLUSTER)
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


def test_mlflow_server_on_the_head_is_sql_backed_proxied_and_internal(raw):
    start = " ".join(raw["head_start_ray_commands"])
    assert "mlflow server" in start and "--backend-store-uri sqlite:////efs/" in start and "--serve-artifacts" in start
    assert "--host $(cat ~/mlflow_host)" in start and "0.0.0.0" not in start
    assert "hostname -I" in " ".join(raw["head_setup_commands"])  # the cluster-internal address
    # inbound: Ray's own SSH + intra-cluster rules, nothing else
    assert raw["provider"]["security_group"]["IpPermissions"] == []


def test_shared_storage_is_mounted_for_cache_runs_and_mlflow(raw):
    init = " ".join(raw["initialization_commands"])
    assert "mount -t nfs4" in init and "efs" in init and "/efs" in init
    assert "--volume /efs:/efs" in raw["docker"]["run_options"]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c.__setitem__("max_workers", "lots"), "Ray rejects the cluster config.*'lots' is not of type 'integer'"),
        (lambda c: c.__setitem__("worker_max", 3), "Ray rejects the cluster config.*'worker_max' was unexpected"),
        (lambda c: c["provider"].pop("type"), "Ray rejects the cluster config"),
        (lambda c: c["provider"].__setitem__("cache_stopped_nodes", True), "cache_stopped_nodes must be false"),
        (
            lambda c: c["provider"]["security_group"].__setitem__(
                "IpPermissions", [{"FromPort": 5000, "ToPort": 5000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
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
    ],
    ids=["schema-type", "schema-unknown-key", "no-provider-type", "stopped-nodes", "open-port", "mlflow-0.0.0.0", "no-proxied-artifacts", "no-gpu"],
)
def test_broken_copies_are_rejected_with_one_line(tmp_path, raw, mutate, match):
    cfg = copy.deepcopy(raw)
    mutate(cfg)
    with pytest.raises(ConfigError, match=match) as e:
        validate_cluster_yaml(_write(tmp_path, cfg))
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
