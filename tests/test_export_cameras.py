"""transforms.json is right, checked WITHOUT the project's camera code: from the JSON alone
(numpy), known 3D points (the means of a few tiny opaque Gaussians) are projected and must land
where the renderer drew them (alpha-weighted blob centroid) within half a pixel."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from export_fixtures import asset_id, make_run
from kernels.gaussians import Gaussians
from pipeline.export import export_dataset

POINTS = np.array([[0.0, 0.0, 0.0], [0.35, 0.1, 0.0], [-0.3, 0.25, 0.15], [0.1, -0.3, -0.2],
                   [-0.15, -0.1, 0.35]])
RES, WIN = 128, 6


def tiny_scene() -> Gaussians:
    n = len(POINTS)
    return Gaussians(means=torch.tensor(POINTS, dtype=torch.float32),
                     log_scales=torch.full((n, 3), float(np.log(0.01))),
                     quats=torch.tensor([[1.0, 0, 0, 0]] * n), opacity_logits=torch.full((n,), 2.0),
                     sh=torch.ones(n, 1, 3), sh_degree=0)


def project(frame: dict, top: dict, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v) and depths from an OpenGL camera-to-world matrix."""
    c2w = np.array(frame["transform_matrix"], dtype=np.float64)
    w2c = np.linalg.inv(c2w)
    cam = (w2c[:3, :3] @ p.T + w2c[:3, 3:4]).T  # OpenGL camera: x right, y up, looking down -z
    fx, fy, cx, cy = (frame[k] if k in frame else top[k] for k in ("fl_x", "fl_y", "cx", "cy"))
    z = -cam[:, 2]
    u = fx * cam[:, 0] / z + cx
    v = fy * -cam[:, 1] / z + cy  # image rows grow downwards
    return np.stack([u, v], 1), z


def test_transforms_project_points_onto_the_rendered_blobs(tmp_path):
    run = make_run(tmp_path / "run", n_done=1, failed=False, scenes={0: tiny_scene()})
    out = tmp_path / "ds"
    export_dataset(str(run), str(out), views=8, resolution=RES, formats="ply", random_views=4,
                   seed=1)
    aid = asset_id(0)
    adir = out / "assets" / aid[:2] / aid
    tf = json.loads((adir / "transforms.json").read_text())
    assert tf["camera_convention"] == "opengl" and tf["w"] == tf["h"] == RES
    checked, worst = 0, 0.0
    ys, xs = np.mgrid[0:RES, 0:RES] + 0.5  # pixel centres
    for frame in tf["frames"]:
        alpha = np.asarray(Image.open(adir / frame["file_path"]))[..., 3].astype(np.float64)
        uv, z = project(frame, tf, POINTS)
        assert (z > 0).all()
        for k in range(len(POINTS)):
            others = np.delete(uv, k, 0)
            if np.min(np.linalg.norm(others - uv[k], axis=1)) < 2 * WIN + 1:
                continue  # another blob would fall into the window
            u, v = uv[k]
            if not (WIN <= u < RES - WIN and WIN <= v < RES - WIN):
                continue
            win = (np.abs(xs - u) <= WIN) & (np.abs(ys - v) <= WIN)
            w = alpha * win
            assert w.sum() > 100, f"no blob near the projected point {k} in {frame['file_path']}"
            c = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
            err = float(np.linalg.norm(c - uv[k]))
            worst = max(worst, err)
            assert err < 0.5, (frame["file_path"], k, c, uv[k])
            checked += 1
    assert checked >= 30
    print(f"checked {checked} blobs, worst offset {worst:.3f} px")
