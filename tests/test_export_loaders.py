"""The export as nerfstudio, instant-ngp and gsplat's Blender-style loader read it (their parsing
logic from tests/third_party_loaders.py, written from their sources): with the loaders' DEFAULT
settings the depths back-project onto the Gaussian means, through each loader's own choice of
intrinsics (nerfstudio ignores per-frame intrinsics when `fl_x` is at the top level, so random
views with their own field of view must carry them per frame only), and the Blender-style
train/test files follow the documented split rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export_fixtures import asset_id, make_run
from kernels.gaussians import Gaussians
from pipeline.export import export_dataset
from third_party_loaders import gsplat_blender, instant_ngp_frames, nerfstudio_depth, nerfstudio_parse

POINTS = np.array([[0.0, 0.0, 0.0], [0.35, 0.1, 0.0], [-0.3, 0.25, 0.15], [0.1, -0.3, -0.2],
                   [-0.15, -0.1, 0.35]])
RES, VIEWS, RANDOM = 64, 9, 4
TOL = 0.03  # world units: the blob radius is 0.01, a 1-pixel error at ~3.5 units is ~0.03


def tiny_scene() -> Gaussians:
    n = len(POINTS)
    return Gaussians(means=torch.tensor(POINTS, dtype=torch.float32),
                     log_scales=torch.full((n, 3), float(np.log(0.01))),
                     quats=torch.tensor([[1.0, 0, 0, 0]] * n), opacity_logits=torch.full((n,), 4.0),
                     sh=torch.ones(n, 1, 3), sh_degree=0)


@pytest.fixture(scope="module")
def adir(tmp_path_factory):
    base = tmp_path_factory.mktemp("loaders")
    run = make_run(base / "run", n_done=1, failed=False, scenes={0: tiny_scene()})
    export_dataset(str(run), str(base / "ds"), views=VIEWS, resolution=RES, formats="ply",
                   random_views=RANDOM, seed=2)
    aid = asset_id(0)
    return base / "ds" / "assets" / aid[:2] / aid


def back_project(c2w_gl: np.ndarray, fx, fy, cx, cy, depth: np.ndarray) -> tuple[int, float]:
    """(points checked, worst distance): each mean -> its pixel (this camera's intrinsics) ->
    the stored depth there -> the world point on that ray. A wrong focal length lands off the
    blob (no depth: inf); a wrong depth unit moves the point along the ray."""
    w2c = np.linalg.inv(c2w_gl)
    cam = (w2c[:3, :3] @ POINTS.T + w2c[:3, 3:4]).T
    uv = np.stack([fx * cam[:, 0] / -cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], 1)
    checked, worst = 0, 0.0
    for k, p in enumerate(POINTS):
        z = -cam[k, 2]
        u, v = uv[k]
        if np.min(np.linalg.norm(np.delete(uv, k, 0) - uv[k], axis=1)) < 4:
            continue  # another blob overlaps this pixel: its depth blends in
        i, j = int(np.floor(v)), int(np.floor(u))
        if not (2 <= i < depth.shape[0] - 2 and 2 <= j < depth.shape[1] - 2):
            continue
        d = depth[i, j]
        if 0 < d < z - 0.05:
            continue  # hidden behind another blob (its depth is the nearer blob's)
        if d <= 0:  # nothing drawn where this mean projects: a wrong camera or depth
            return checked, float("inf")
        x = (u - cx) / fx * d  # the ray through the projected mean, at the stored depth
        y = -(v - cy) / fy * d
        q = c2w_gl[:3, :3] @ np.array([x, y, -d]) + c2w_gl[:3, 3]
        worst = max(worst, float(np.linalg.norm(q - p)))
        checked += 1
    return checked, worst


def test_nerfstudio_defaults_back_project_depth_onto_the_means(adir):
    tf = json.loads((adir / "transforms.json").read_text())
    assert "fl_x" not in tf  # random views differ: intrinsics per frame only
    total, worst = 0, 0.0
    for split in ("train", "val"):
        ns = nerfstudio_parse(adir, split)  # the parser's defaults (depth_unit_scale_factor 1e-3)
        assert ns["depth_filenames"] and len(ns["depth_filenames"]) == len(ns["image_filenames"])
        for k in range(len(ns["image_filenames"])):
            depth = nerfstudio_depth(ns["depth_filenames"][k], ns["depth_unit_scale_factor"])
            n, w = back_project(ns["poses"][k], ns["fl_x"][k], ns["fl_y"][k], ns["cx"][k],
                                ns["cy"][k], depth)
            total, worst = total + n, max(worst, w)
    print(f"nerfstudio: {total} means back-projected, worst {worst:.4f} units")
    assert total >= 30 and worst < TOL


def test_instant_ngp_keys_back_project_depth_onto_the_means(adir):
    total, worst = 0, 0.0
    for fr in instant_ngp_frames(adir):
        assert fr["image"].is_file() and fr["depth"] is not None
        n, w = back_project(fr["c2w"], fr["fl_x"], fr["fl_y"], fr["cx"], fr["cy"], fr["depth"])
        total, worst = total + n, max(worst, w)
    assert total >= 30 and worst < TOL


def test_shared_intrinsics_are_top_level_only(tmp_path):
    run = make_run(tmp_path / "run", n_done=1, failed=False, scenes={0: tiny_scene()})
    export_dataset(str(run), str(tmp_path / "ds"), views=3, resolution=32, formats="ply")
    aid = asset_id(0)
    tf = json.loads((tmp_path / "ds" / "assets" / aid[:2] / aid / "transforms.json").read_text())
    assert "fl_x" in tf and "camera_angle_x" in tf
    assert not any("fl_x" in f for f in tf["frames"])


def test_gsplat_blender_loader_reads_the_split_files(adir):
    tf = json.loads((adir / "transforms.json").read_text())
    tr, te = gsplat_blender(adir, "train"), gsplat_blender(adir, "test")
    # the documented rule: orbit view i is a test view when i % 8 == 0; random views are not in
    # the Blender-style files (one field of view there)
    assert te["image_ids"] == [f"images/{i:03d}" for i in range(VIEWS) if i % 8 == 0]
    assert tr["image_ids"] == [f"images/{i:03d}" for i in range(VIEWS) if i % 8 != 0]
    orbit = [f for f in tf["frames"] if f["view_set"] == "orbit"]
    K_ref = np.array([[orbit[0]["fl_x"], 0, orbit[0]["cx"]], [0, orbit[0]["fl_y"], orbit[0]["cy"]],
                      [0, 0, 1]])
    assert np.allclose(tr["K"], K_ref, atol=1e-6)
    # OpenCV c2w as gsplat makes it: means project inside the image, in front of the camera
    for c2w in tr["camtoworlds"] + te["camtoworlds"]:
        w2c = np.linalg.inv(c2w)
        cam = (w2c[:3, :3] @ POINTS.T + w2c[:3, 3:4])
        assert (cam[2] > 0).all()
        uv = (tr["K"] @ cam)[:2] / cam[2]
        assert ((uv > 0) & (uv < RES)).all()
    # nerfstudio's split lists say the same
    assert tf["test_filenames"] == [f + ".png" for f in te["image_ids"]]
