"""Multi-view renders of one asset and their cameras in the nerfstudio / Blender convention.

Why this convention: NeRF/3DGS trainers (nerfstudio, the Blender/NeRF-synthetic loaders, TRELLIS'
toolkits) read `transforms.json` with OpenGL camera-to-world matrices (camera x right, y up, looking
down -z). The renderer works with OpenCV world-to-camera `viewmats` (x right, y down, z forward),
so c2w = inv(viewmat) with its y and z axes (columns 1 and 2) negated. Intrinsics are pixels with
the principal point at the image centre and pixel centres at (i + 0.5, j + 0.5), which is what
nerfstudio assumes.

Images are RGBA PNGs with straight (not premultiplied) colour: rendered over black, divided by the
accumulated opacity, which is the alpha channel. Depth is the renderer's expected camera-z depth
(along the optical axis, not along the ray), 0 where nothing was hit, stored as 16-bit PNGs with
`depth = value * depth_scale` (one scale per asset, in transforms.json).
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


def depth_scale_for(depth: np.ndarray) -> float:
    """Units per 16-bit step so the farthest depth of the asset fits (1e-6 for an empty asset)."""
    far = float(depth.max()) if depth.size else 0.0
    return max(far, 1e-6 * DEPTH_MAX_VALUE) / DEPTH_MAX_VALUE


def depth_png(depth: np.ndarray, scale: float) -> bytes:
    """One (H,W) depth map as a 16-bit grayscale PNG of round(depth / scale)."""
    q = np.clip(np.rint(depth / scale), 0, DEPTH_MAX_VALUE).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG")
    return buf.getvalue()


def rgba_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _intrinsics(cams: Cameras, i: int) -> dict[str, float]:
    K = cams.Ks[i].double()
    return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]),
            "cy": float(K[1, 2])}


def transforms(cams: Cameras, splits: list[str], image_paths: list[str], depth_paths: list[str],
               depth_scale: float) -> dict[str, Any]:
    """The nerfstudio/Blender `transforms.json` of these views (intrinsics per frame too, since
    random training views have their own field of view)."""
    c2w = c2w_opengl(cams.viewmats)
    top = _intrinsics(cams, 0)
    w, h = int(cams.width), int(cams.height)
    frames = []
    for i in range(len(cams)):
        fr: dict[str, Any] = {"file_path": image_paths[i], "depth_file_path": depth_paths[i],
                              "transform_matrix": c2w[i].tolist(), "split": splits[i],
                              **_intrinsics(cams, i),
                              "azimuth_deg": float(cams.azimuth_deg[i]),
                              "elevation_deg": float(cams.elevation_deg[i])}
        frames.append(fr)
    return {
        "camera_convention": CAMERA_CONVENTION,
        "camera_convention_note": (
            "transform_matrix is camera-to-world with OpenGL camera axes (x right, y up, looking "
            "down -z), as in nerfstudio and the Blender datasets; world is y-up with the object at "
            "the origin; intrinsics in pixels, pixel centres at (i+0.5, j+0.5)"),
        "camera_model": "PINHOLE",
        **top, "w": w, "h": h,
        "camera_angle_x": float(2.0 * np.arctan(0.5 * w / top["fl_x"])),
        "image_format": "RGBA PNG, straight alpha = accumulated opacity",
        "depth_scale": depth_scale,
        "depth_unit_scale_factor": depth_scale,
        "depth_note": ("16-bit PNG; depth = value * depth_scale is the camera-z (optical-axis) "
                       "depth in world units; 0 = no surface"),
        "frames": frames,
    }
