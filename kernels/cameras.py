"""Cameras: the SCTD training sampler and the evaluation orbit.

Convention (docs/INTERFACES.md): OpenCV camera (x right, y down, z forward), world y-up, object at
the origin, `viewmats` world-to-camera 4x4 like gsplat. Azimuth 0 = camera on +z looking at the
origin; elevation = 90 - polar. Radii and fields of view are parameters because the toy world uses
unit-size objects while the spec's numbers assume SD scenes of extent 3.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A batch of pinhole cameras sharing one image size."""

    viewmats: Tensor  # (B, 4, 4) world -> camera
    Ks: Tensor  # (B, 3, 3) pixel intrinsics for (width, height)
    width: int
    height: int
    azimuth_deg: Tensor  # (B,)
    elevation_deg: Tensor  # (B,)
    radius: Tensor  # (B,)
    fovy: Tensor  # (B,) radians

    def __post_init__(self) -> None:
        b = self.viewmats.shape[0]
        if self.viewmats.shape != (b, 4, 4) or self.Ks.shape != (b, 3, 3):
            raise ValueError(
                f"Cameras: viewmats must be (B,4,4) and Ks (B,3,3); got {tuple(self.viewmats.shape)} "
                f"and {tuple(self.Ks.shape)}"
            )
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(f"Cameras: width/height must be >= 1, got {self.width}x{self.height}")

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(
            self.viewmats.to(device), self.Ks.to(device), self.width, self.height,
            self.azimuth_deg.to(device), self.elevation_deg.to(device), self.radius.to(device),
            self.fovy.to(device),
        )

    def __getitem__(self, idx: int | slice | Tensor) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Cameras(
            self.viewmats[idx], self.Ks[idx], self.width, self.height, self.azimuth_deg[idx],
            self.elevation_deg[idx], self.radius[idx], self.fovy[idx],
        )

    @property
    def centers(self) -> Tensor:
        """(B, 3) camera centres in world coordinates."""
        return viewmat_centers(self.viewmats)


def viewmat_centers(viewmats: Tensor) -> Tensor:
    """(B, 3) world-space centres of rigid world-to-camera matrices (B, 4, 4): -R^T t."""
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    return -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0]


@dataclass
class CameraSamplerParams:
    """Training camera distribution of docs/METHOD.md (LucidDreamer's progressive widening)."""

    radius_range: tuple[float, float] = (5.2, 5.5)
    fovy_range: tuple[float, float] = (0.32, 0.60)  # radians
    polar_range_deg: tuple[float, float] = (45.0, 105.0)
    azimuth_range_deg: tuple[float, float] = (-180.0, 180.0)
    widen_start: int = 500
    widen_every: int = 500
    radius_range_final: tuple[float, float] = (3.5, 5.0)
    fovy_range_final: tuple[float, float] = (0.16, 0.60)
    # per widening event: radius bounds x radius_scale, fovy bounds x fovy_scale, clamped at final
    radius_scale: float = 0.95
    fovy_scale: tuple[float, float] = (0.75, 1.1)
    jitter_center: float = 0.2  # uniform box of this width around the eye
    jitter_target: float = 0.1  # std of the look-at target around the origin
    jitter_up: float = 0.02  # std added to the up vector

    def __post_init__(self) -> None:
        for name in ("radius_range", "fovy_range", "polar_range_deg", "azimuth_range_deg",
                     "radius_range_final", "fovy_range_final"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"CameraSamplerParams.{name}={getattr(self, name)}: need lo <= hi")
        if self.widen_every < 1:
            raise ValueError(f"CameraSamplerParams.widen_every={self.widen_every}: must be >= 1")


def widened_ranges(iteration: int, p: CameraSamplerParams) -> tuple[tuple[float, float], tuple[float, float]]:
    """(radius_range, fovy_range) in force at `iteration`.

    From `widen_start`, every `widen_every` iterations (the first event at widen_start itself) the
    radius bounds shrink by `radius_scale` (not below the final range) and the fovy bounds move by
    `fovy_scale` (lower bound down, upper up) toward the final range: closed form, so resuming at
    any iteration gives the same ranges.
    """
    k = 0 if iteration < p.widen_start else (iteration - p.widen_start) // p.widen_every + 1

    def toward(start: float, final: float, factor: float) -> float:
        lo, hi = min(start, final), max(start, final)
        return min(max(start * factor**k, lo), hi)

    r = (toward(p.radius_range[0], p.radius_range_final[0], p.radius_scale),
         toward(p.radius_range[1], p.radius_range_final[1], p.radius_scale))
    f = (toward(p.fovy_range[0], p.fovy_range_final[0], p.fovy_scale[0]),
         toward(p.fovy_range[1], p.fovy_range_final[1], p.fovy_scale[1]))
    return (min(r), max(r)), (min(f), max(f))


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """World-to-camera 4x4 (OpenCV axes) for eyes (B,3) looking at targets (B,3); up (B,3) or (3,)."""
    eye, target = torch.atleast_2d(eye), torch.atleast_2d(target)
    up = torch.atleast_2d(up).expand_as(eye)
    fwd = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(fwd, up, dim=-1)
    if bool((right.norm(dim=-1) < 1e-8).any()):
        raise ValueError("look_at: up vector is parallel to the viewing direction; pick another up")
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(fwd, right, dim=-1)
    R = torch.stack([right, down, fwd], dim=1)  # rows = camera axes in world coords
    vm = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    vm[:, :3, :3] = R
    vm[:, :3, 3] = -(R @ eye[:, :, None])[:, :, 0]
    vm[:, 3, 3] = 1.0
    return vm


def intrinsics(fovy: Tensor, width: int, height: int) -> Tensor:
    """(B,3,3) pixel intrinsics with square pixels and the principal point at the image centre."""
    fy = 0.5 * height / torch.tan(0.5 * fovy)
    K = torch.zeros(fovy.shape[0], 3, 3, dtype=fovy.dtype, device=fovy.device)
    K[:, 0, 0] = fy
    K[:, 1, 1] = fy
    K[:, 0, 2] = 0.5 * width
    K[:, 1, 2] = 0.5 * height
    K[:, 2, 2] = 1.0
    return K


def spherical_eye(azimuth_deg: Tensor, elevation_deg: Tensor, radius: Tensor) -> Tensor:
    """Camera position for azimuth (0 = +z, 90 = +x) and elevation (y-up)."""
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    return torch.stack(
        [radius * torch.cos(el) * torch.sin(az), radius * torch.sin(el), radius * torch.cos(el) * torch.cos(az)],
        dim=-1,
    )


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def sample_training_cameras(
    n: int, width: int, height: int, iteration: int, params: CameraSamplerParams, generator: torch.Generator
) -> Cameras:
    """n random training views (float32, CPU); deterministic given the generator state."""
    if n < 1:
        raise ValueError(f"sample_training_cameras: n={n} must be >= 1")
    (r_lo, r_hi), (f_lo, f_hi) = widened_ranges(iteration, params)
    radius = _uniform(n, r_lo, r_hi, generator)
    fovy = _uniform(n, f_lo, f_hi, generator)
    polar = _uniform(n, *params.polar_range_deg, generator)
    az = _uniform(n, *params.azimuth_range_deg, generator)
    az = torch.remainder(az + 180.0, 360.0) - 180.0
    elev = 90.0 - polar
    eye = spherical_eye(az, elev, radius)
    eye = eye + (torch.rand(n, 3, generator=generator, dtype=torch.float64) - 0.5) * params.jitter_center
    target = torch.randn(n, 3, generator=generator, dtype=torch.float64) * params.jitter_target
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) + torch.randn(
        n, 3, generator=generator, dtype=torch.float64
    ) * params.jitter_up
    vm = look_at(eye, target, up)
    return Cameras(
        vm.float(), intrinsics(fovy, width, height).float(), int(width), int(height),
        az.float(), elev.float(), radius.float(), fovy.float(),
    )


def orbit_cameras(
    n: int = 120, elevation_deg: float = 15.0, radius: float = 3.5, fovy: float = 0.6,
    width: int = 512, height: int = 512,
) -> Cameras:
    """Evaluation turntable: n views evenly in azimuth starting at the front (0 deg), no jitter."""
    if n < 1:
        raise ValueError(f"orbit_cameras: n={n} must be >= 1")
    az = torch.remainder(torch.arange(n, dtype=torch.float64) * (360.0 / n) + 180.0, 360.0) - 180.0
    el = torch.full((n,), float(elevation_deg), dtype=torch.float64)
    r = torch.full((n,), float(radius), dtype=torch.float64)
    fv = torch.full((n,), float(fovy), dtype=torch.float64)
    eye = spherical_eye(az, el, r)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    vm = look_at(eye, torch.zeros_like(eye), up)
    return Cameras(vm.float(), intrinsics(fv, width, height).float(), int(width), int(height),
                   az.float(), el.float(), r.float(), fv.float())
