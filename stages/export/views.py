"""Multi-view renders of one asset and their cameras in the nerfstudio / Blender convention.

Why this convention: NeRF/3DGS trainers (nerfstudio, the Blender/NeRF-synthetic loaders, TRELLIS'
toolkits) read `transforms.json` with OpenGL camera-to-world matrices (camera x right, y up, looking
down -z). The renderer works with OpenCV world-to-camera `viewmats` (x right, y down, z forward),
so c2w = inv(viewmat) with its y and z axes (columns 1 and 2) negated. Intrinsics are pixels with
the principal point at the image centre and pixel centres at (i + 0.5, j + 0.5), which is what
nerfstudio assumes.

Images are RGBA PNGs with straight (not premultiplied) colour: rendered over black, divided by the
accumulated opacity, which is the alpha channel. Depth is the renderer's expected camera-z depth
(along the optical axis, not along the ray), 0 where nothing was hit, stored as 16-bit PNGs in
millimetres of world units (`depth = value * 0.001`): the unit nerfstudio's dataparser assumes by
default (`depth_unit_scale_factor` 1e-3, a parser option, not a transforms.json key) and what
instant-ngp reads with the top-level `integer_depth_scale` 0.001. A depth past 65.535 world units
does not fit 16 bits and is stored as 0 (= no depth, what depth losses skip), never clipped to a
wrong value; sctd3d's objects sit ~3.5 units from the camera.

Files for each loader (one view list, one split rule):
- `transforms.json` (nerfstudio, instant-ngp): every view; intrinsics at the top level when all
  views share them, else per frame only (nerfstudio ignores per-frame intrinsics once `fl_x` is
  at the top level); per frame `depth_file_path` (nerfstudio) and `depth_path` (instant-ngp);
  `train_filenames` / `val_filenames` / `test_filenames` (nerfstudio's split lists).
- `transforms_train.json` / `transforms_test.json` (Blender-style loaders: gsplat's examples,
  nerfstudio's blender parser): the orbit views only (these loaders take one field of view,
  `camera_angle_x`), `file_path` without the `.png` they append.
- Split rule (SPLIT_EVERY): orbit view i is a test view when i % 8 == 0 (one in 8, nerfstudio's
  `eval_interval` and the LLFF / mip-NeRF 360 hold-out); every other view, random views included,
  is a training view; an asset with one view has no test view.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from PIL import Image

from kernels.cameras import CameraSamplerParams, Cameras, orbit_cameras, sample_training_cameras
from kernels.gaussians import Gaussians
from stages.render import render_batches

CAMERA_CONVENTION = "opengl"
DEPTH_UNIT = 1e-3  # world units per 16-bit depth step (millimetres: nerfstudio's default)
SPLIT_EVERY = 8  # orbit view i is a test view when i % SPLIT_EVERY == 0
WORLD_NOTE = ("world is y-up and right-handed (RUB: +x right, +y up, +z towards the azimuth-0 "
              "camera), object at the origin: the OpenGL / three.js convention")
DEPTH_MAX_VALUE = 65535
# OpenCV camera axes -> OpenGL camera axes (negate y and z)
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def orbit(n: int, resolution: int, elevation_deg: float, radius: float, fovy: float) -> Cameras:
    """The evaluation orbit of the run (same parameters as its render stage), at `resolution`."""
    return orbit_cameras(n=n, elevation_deg=elevation_deg, radius=radius, fovy=fovy,
                         width=resolution, height=resolution)


def view_seed(seed: int, asset_id: str) -> int:
    """Per-asset seed: each asset gets its own random views, the same ones on every re-run."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{asset_id}".encode()).digest()[:8], "little") >> 1


def random_views(n: int, resolution: int, sampler: dict[str, Any], iteration: int, seed: int,
                 asset_id: str) -> Cameras:
    """`n` views from the training camera distribution (`sampler`: generate.cameras of the run)."""
    names = {f.name for f in fields(CameraSamplerParams)}
    params = CameraSamplerParams(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in sampler.items() if k in names})
    gen = torch.Generator().manual_seed(view_seed(seed, asset_id))
    return sample_training_cameras(n, resolution, resolution, iteration, params, gen)


def c2w_opengl(viewmats: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B,4,4) OpenGL camera-to-world matrices from OpenCV world-to-camera viewmats."""
    vm = np.asarray(viewmats.detach().cpu().double() if isinstance(viewmats, torch.Tensor)
                    else viewmats, dtype=np.float64)
    return np.linalg.inv(vm) @ _CV_TO_GL


@torch.no_grad()
def render_rgba_depth(g: Gaussians, cams: Cameras, backend: str = "auto",
                      device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rgba uint8 (V,H,W,4) straight alpha, depth float32 (V,H,W), 0 where alpha = 0), rendered
    by the project's batched renderer (stages.render.render_batches)."""
    rgba, depth = [], []
    for out in render_batches(g, cams, backend, None, 0, device):
        a = out.alpha.clamp(0, 1).float().cpu()
        rgb = (out.rgb.float().cpu() / a.clamp_min(1e-6)).clamp(0, 1)  # straight colour
        rgb = torch.where(a > 0, rgb, torch.zeros_like(rgb))
        q = (torch.cat([rgb, a], -1) * 255.0 + 0.5).to(torch.uint8)
        rgba.append(q.numpy())
        d = torch.where(a > 0, out.depth.float().cpu(), torch.zeros_like(a))[..., 0]
        depth.append(torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0).numpy())
    return np.concatenate(rgba), np.concatenate(depth)


def depth_png(depth: np.ndarray, unit: float = DEPTH_UNIT) -> tuple[bytes, int]:
    """(16-bit grayscale PNG of round(depth / unit), pixels too far for 16 bits, stored as 0)."""
    q = np.rint(depth / unit)
    far = q > DEPTH_MAX_VALUE
    q = np.where(far, 0, np.clip(q, 0, DEPTH_MAX_VALUE)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG")
    return buf.getvalue(), int(far.sum())


def rgba_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _intrinsics(cams: Cameras, i: int) -> dict[str, float]:
    K = cams.Ks[i].double()
    return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]),
            "cy": float(K[1, 2])}


def split_of(view_sets: list[str]) -> list[str]:
    """"train" / "test" per view by the split rule (module docstring)."""
    n_orbit = view_sets.count("orbit")
    out, k = [], 0
    for vs in view_sets:
        test = vs == "orbit" and n_orbit > 1 and k % SPLIT_EVERY == 0
        k += vs == "orbit"
        out.append("test" if test else "train")
    return out


def transforms(cams: Cameras, view_sets: list[str], image_paths: list[str],
               depth_paths: list[str]) -> dict[str, Any]:
    """The nerfstudio / instant-ngp `transforms.json` of these views (module docstring)."""
    c2w = c2w_opengl(cams.viewmats)
    intr = [_intrinsics(cams, i) for i in range(len(cams))]
    shared = all(k == intr[0] for k in intr)
    w, h = int(cams.width), int(cams.height)
    splits = split_of(view_sets)
    frames = []
    for i in range(len(cams)):
        fr: dict[str, Any] = {"file_path": image_paths[i], "depth_file_path": depth_paths[i],
                              "depth_path": depth_paths[i], "transform_matrix": c2w[i].tolist(),
                              "view_set": view_sets[i], "split": splits[i],
                              **({} if shared else intr[i]),
                              "azimuth_deg": float(cams.azimuth_deg[i]),
                              "elevation_deg": float(cams.elevation_deg[i])}
        frames.append(fr)
    train = [image_paths[i] for i in range(len(cams)) if splits[i] == "train"]
    test = [image_paths[i] for i in range(len(cams)) if splits[i] == "test"]
    return {
        "camera_convention": CAMERA_CONVENTION,
        "camera_convention_note": (
            "transform_matrix is camera-to-world with OpenGL camera axes (x right, y up, looking "
            f"down -z), as in nerfstudio and the Blender datasets; {WORLD_NOTE}; intrinsics in "
            "pixels, pixel centres at (i+0.5, j+0.5)"),
        "world_axes": "RUB (y-up)",
        "camera_model": "PINHOLE",
        **(intr[0] if shared else {}), "w": w, "h": h,
        **({"camera_angle_x": float(2.0 * np.arctan(0.5 * w / intr[0]["fl_x"]))} if shared else {}),
        "image_format": "RGBA PNG, straight alpha = accumulated opacity",
        "integer_depth_scale": DEPTH_UNIT,
        "depth_scale": DEPTH_UNIT,
        "depth_note": ("16-bit PNG in millimetres: depth = value * 0.001 is the camera-z "
                       "(optical-axis) depth in world units (nerfstudio's default "
                       "depth_unit_scale_factor; instant-ngp's integer_depth_scale); 0 = no "
                       "surface or farther than 65.535"),
        "split_rule": (f"orbit view i is a test view when i % {SPLIT_EVERY} == 0; all other views "
                       "(random views too) train"),
        "train_filenames": train, "val_filenames": test, "test_filenames": test,
        "frames": frames,
    }


def blender_transforms(tf: dict[str, Any], split: str) -> dict[str, Any]:
    """`transforms_{split}.json` for Blender-style loaders: the orbit views of that split, one
    field of view (`camera_angle_x`), `file_path` without the `.png` those loaders append."""
    orbit = [f for f in tf["frames"] if f["view_set"] == "orbit"]
    fl = orbit[0].get("fl_x", tf.get("fl_x")) if orbit else tf.get("fl_x")
    out: dict[str, Any] = {
        "camera_angle_x": float(2.0 * np.arctan(0.5 * tf["w"] / fl)) if fl else None,
        "camera_convention": tf["camera_convention"], "split_rule": tf["split_rule"],
        "frames": [{"file_path": f["file_path"].removesuffix(".png"),
                    "transform_matrix": f["transform_matrix"], "depth_path": f["depth_path"]}
                   for f in orbit if f["split"] == split]}
    return out
