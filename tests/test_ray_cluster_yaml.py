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
