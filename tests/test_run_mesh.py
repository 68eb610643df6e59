"""`sctd3d run --mesh glb` (pipeline.mesh): each asset's folder gets its asset.glb, made by the
export's glb encoder, before the asset's record is committed; off by default; no asset id moves.

Real toy generations through the CLI (toy.yaml, a few iterations, tiny mesh options); the GLB is
checked by the programs that read it (trimesh, pygltflib's extras).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_capture import run_cli as cli
from common import manifest
from common.config import ConfigError, load_config
from pipeline.inputs import asset_generation_hash, asset_id_for

FAST = ["--config", "toy.yaml", "--set", "generate.iterations=30", "--set", "pipeline.render=false",
        "--set", "pipeline.score=false", "--set", "pipeline.report=false",
        "--set", "metrics.fid=false"]
MESH_OPTIONS = "{resolution: 32, threshold: 0.3, texture: 64, bake_views: 4, bake_resolution: 64, fidelity_views: 4}"
PROMPT = "a red cube"
FROZEN = json.loads(Path(__file__).with_name("frozen_asset_ids.json").read_text())


def _run(base: Path, name: str, *extra: str) -> tuple[Path, dict]:
    prompts = base / "p.txt"
    prompts.write_text(PROMPT + "\n")
    out = base / name
    code, stdout, err = cli("run", str(prompts), "--out", str(out), *FAST, *extra)
    assert code == 0, (stdout, err[-3000:])
    rows = manifest.read(str(out)).to_pylist()
    assert [r["status"] for r in rows] == ["done"], rows
    return out, rows[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("run_mesh")
    on = _run(base, "on", "--mesh", "glb", "--set", f"pipeline.mesh_options={MESH_OPTIONS}")
    off = _run(base, "off")
    return on, off


def _asset_dir(out: Path, aid: str) -> Path:
    return out / "assets" / aid[:2] / aid


def test_run_writes_each_assets_glb_before_its_record(runs):
    import pygltflib
    import trimesh

    (out, row), _ = runs
    glb = _asset_dir(out, row["asset_id"]) / "asset.glb"
    assert glb.is_file()
    m = trimesh.load(glb, force="mesh")
    assert len(m.faces) > 100 and m.visual.material.baseColorTexture.size == (64, 64)
    gltf = pygltflib.GLTF2().load(str(glb))
    assert gltf.asset.extras["asset_id"] == row["asset_id"]
    assert gltf.asset.extras["prompt"] == PROMPT
    assert gltf.asset.extras["mesh_options"]["resolution"] == 32
    records = list((out / "manifest").rglob("*.parquet"))  # its part, or the compacted manifest
    assert records and all(os.stat(glb).st_mtime_ns <= os.stat(p).st_mtime_ns for p in records)


def test_mesh_is_off_by_default_and_moves_no_asset_id(runs):
    (_, on_row), (off, off_row) = runs
    assert on_row["asset_id"] == off_row["asset_id"]
    assert not list(off.rglob("*.glb"))
    cfg = load_config("toy.yaml", ["pipeline.mesh=glb,obj", f"pipeline.mesh_options={MESH_OPTIONS}"])
    assert cfg.pipeline.mesh == "glb,obj"
    assert asset_id_for(PROMPT, 0, asset_generation_hash(cfg)) == FROZEN[f"toy.yaml|{PROMPT}|0"]


@pytest.mark.parametrize("extra,named", [(["--mesh", "gltf"], "'gltf'"),
                                         (["--set", "pipeline.mesh_options={resolutoin: 8}"],
                                          "mesh.resolutoin")])
def test_bad_run_mesh_option_is_one_line(tmp_path, extra, named):
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    code, _, err = cli("run", str(prompts), "--out", str(tmp_path / "o"), *FAST,
                       *(extra if extra[0] == "--mesh" else ["--mesh", "glb", *extra]))
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 2 and len(lines) == 1 and named in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.ply"))


def test_mesh_options_are_checked_by_the_config_layer():
    with pytest.raises(ConfigError, match="pipeline.mesh: .stl. is not a mesh format"):
        from pipeline.validate import check_names

        check_names(load_config("toy.yaml", ["pipeline.mesh=stl"]))
