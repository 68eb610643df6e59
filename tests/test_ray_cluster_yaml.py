"""ray_cluster.yaml is a valid cluster-launcher file by Ray's own schema (no cloud calls), with
the properties the pipeline relies on."""

import copy
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_validates_with_ray_schema(cluster):
    # exactly what `ray up` does before touching a cloud: fill defaults, then schema-validate
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_wrokers"] = 0
    with pytest.raises(Exception, match="min_wrokers"):
        validate_config(prepare_config(broken))


def test_head_takes_no_work_and_workers_are_spot_gpus(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]  # on-demand
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert workers and all(w["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
                           for w in workers)
    assert all(w["resources"].get("GPU", 0) >= 1 for w in workers)
    assert re.fullmatch(r"rayproject/ray:[\d.]+-py3\d+-gpu", cluster["docker"]["image"])


def test_image_and_setup_match_pinned_versions(cluster):
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    ray_pin = re.search(r'"ray\[default\]==([^"]+)"', pyproject).group(1)
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{ray_pin}-")
    setup = "\n".join(cluster["setup_commands"])
    assert f"== '{version}'" in setup and 'pip install -q "$HOME/sctd3d"' in setup
    assert cluster["file_mounts"]["~/sctd3d"] == "."


# ---- issue 13: dashboard access, Point-E, the driver check, gsplat built at setup ----------------
def _start_commands(cluster) -> str:
    return "\n".join(cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])


def test_dashboard_is_not_open_to_the_world(cluster):
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    extra = cluster["provider"]["security_group"]["IpPermissions"]
    # the exact rules `ray up` will authorize: Ray's defaults + ours
    rules = _create_default_inbound_rules({"sg-test"}, extra)
    world = [r for r in rules if any(ip.get("CidrIp") == "0.0.0.0/0" for ip in r.get("IpRanges", []))
             or any(ip.get("CidrIpv6") == "::/0" for ip in r.get("Ipv6Ranges", []))]
    assert world and all((r["FromPort"], r["ToPort"]) == (22, 22) for r in world)  # SSH only
    for r in rules:
        if r.get("IpRanges") or r.get("Ipv6Ranges"):
            assert not (r["FromPort"] <= 8265 <= r["ToPort"]) and r["FromPort"] != -1, r
    head = "\n".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    for types in cluster["available_node_types"].values():
        assert "SecurityGroupIds" not in types["node_config"]  # else Ray would not create the group above


def test_token_authentication_is_on_on_every_node(cluster):
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    for cmd in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token ray start" in cmd
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "test -s ~/.ray/auth_token" in cluster["setup_commands"][0]  # fails the node without a token


def test_point_e_is_installed_and_imported_on_every_node(cluster):
    from stages.init import POINT_E_INSTALL

    setup = cluster["setup_commands"]
    assert f"pip install -q {POINT_E_INSTALL.split(' ', 2)[2]}" in setup
    assert 'python -c "import point_e"' in setup


def test_gpu_workers_check_driver_and_build_gsplat_at_setup(cluster):
    import torch

    setup = cluster["worker_setup_commands"]
    assert setup[-1] == 'python "$HOME/sctd3d/scripts/check_gpu_node.py"'
    assert (ROOT / "scripts" / "check_gpu_node.py").is_file()
    assert "check_gpu_node" not in "\n".join(cluster["head_setup_commands"])  # the head has no GPU
    # the CUDA compiler gsplat's JIT build uses is the one torch's CUDA build names
    assert any(f"cuda-toolkit[nvcc" in c and f"=={torch.version.cuda}." in c for c in setup), setup
    gpu = cluster["available_node_types"]["gpu_worker"]["node_config"]
    assert gpu["ImageId"].startswith("ami-")
    text = (ROOT / "ray_cluster.yaml").read_text()
    assert f"CUDA {torch.version.cuda} build and needs driver >= 580" in text
