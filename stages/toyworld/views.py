"""Rendered views of toy objects from the training-camera distribution, cached on disk.

Why cached by content hash: the exact prior, the toy SD trainer and the toy metrics all need the
same K views per object; the hash covers the object spec, the camera parameters, the view count,
resolution and seed, so editing the catalogue or the config re-renders only what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from kernels.cameras import CameraSamplerParams, sample_training_cameras
from kernels.render import render
from stages.toyworld.catalogue import Catalogue, ObjectSpec, build_object, load_catalogue
from common.storage import atomic_path

log = logging.getLogger(__name__)
VIEWS_VERSION = 1  # bump when the rendering recipe changes (invalidates caches)


@dataclass(frozen=True)
class ViewParams:
    """What determines a set of toy views (defaults = common.config.ToyConfig defaults)."""

    num_views: int = 256
    resolution: int = 32
    radius_range: tuple[float, float] = (2.6, 2.9)
    fovy_range: tuple[float, float] = (0.55, 0.75)
    polar_range_deg: tuple[float, float] = (45.0, 105.0)
    seed: int = 0
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if int(self.num_views) < 1:
            raise ValueError(f"ViewParams.num_views={self.num_views}: must be >= 1")
        if not 4 <= int(self.resolution) <= 1024:
            raise ValueError(f"ViewParams.resolution={self.resolution}: must be in 4..1024")

    @classmethod
    def from_config(cls, toy_cfg) -> "ViewParams":  # noqa: ANN001  (common.config.ToyConfig)
        return cls(num_views=int(toy_cfg.views_per_object), resolution=int(toy_cfg.resolution),
                   radius_range=tuple(toy_cfg.camera_radius_range),  # type: ignore[arg-type]
                   fovy_range=tuple(toy_cfg.camera_fovy_range))  # type: ignore[arg-type]

    def camera_params(self) -> CameraSamplerParams:
        return CameraSamplerParams(radius_range=tuple(self.radius_range), fovy_range=tuple(self.fovy_range),
                                   polar_range_deg=tuple(self.polar_range_deg))


@dataclass
class ObjectViews:
    name: str
    images: Tensor  # (K, H, W, 3) float32 in [0, 1]
    azimuth_deg: Tensor  # (K,)
    elevation_deg: Tensor  # (K,)

    def chw(self) -> Tensor:
        """(K, 3, H, W): the layout priors take."""
        return self.images.permute(0, 3, 1, 2).contiguous()


def default_cache_dir() -> Path:
    env = os.environ.get("SCTD3D_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sctd3d"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir()


def views_key(obj: ObjectSpec, p: ViewParams) -> str:
    d = {"v": VIEWS_VERSION, "obj": obj.content_hash(), "params": p.__dict__}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:24]


def render_views(obj: ObjectSpec, p: ViewParams, catalogue: Catalogue) -> ObjectViews:
    """Render without caching. Cameras depend on (seed, object name) only, so they are stable."""
    seed = p.seed * 1_000_003 + int(hashlib.sha256(obj.name.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    cams = sample_training_cameras(p.num_views, p.resolution, p.resolution, 0, p.camera_params(), g)
    gs = build_object(obj.name, catalogue)
    chunks = []
    bg = torch.tensor(p.background, dtype=torch.float32)
    with torch.no_grad():
        for i in range(0, len(cams), 64):
            chunks.append(render(gs, cams[i:i + 64], background=bg, backend="torch").rgb.clamp(0, 1))
    return ObjectViews(obj.name, torch.cat(chunks).float().contiguous(), cams.azimuth_deg.clone(),
                       cams.elevation_deg.clone())


def object_views(name_or_prompt: str, params: ViewParams | None = None,
                 catalogue: Catalogue | str | Path | None = None,
                 cache_dir: str | Path | None = None) -> ObjectViews:
    """K views of one object, from the disk cache when present (rendered and stored otherwise)."""
    p = params or ViewParams()
    cat = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    obj = cat.get(name_or_prompt)
    path = resolve_cache_dir(cache_dir) / "toy_views" / f"{obj.name}-{views_key(obj, p)}.safetensors"
    if path.is_file():
        try:
            d = load_file(str(path))
            return ObjectViews(obj.name, d["images"], d["azimuth_deg"], d["elevation_deg"])
        except Exception as exc:  # a truncated/corrupt cache file: re-render, never trust it
            log.warning("toy view cache %s unreadable (%s); re-rendering", path, exc)
    v = render_views(obj, p, cat)
    with atomic_path(path) as tmp:  # concurrent workers never see half a file
        save_file({"images": v.images, "azimuth_deg": v.azimuth_deg, "elevation_deg": v.elevation_deg},
                  tmp, metadata={"object": obj.name, "params": json.dumps(p.__dict__, default=list)})
    log.info("rendered %d toy views of %s -> %s", p.num_views, obj.name, path)
    return v


def catalogue_views(params: ViewParams | None = None, catalogue: Catalogue | str | Path | None = None,
                    cache_dir: str | Path | None = None, names: list[str] | None = None) -> list[ObjectViews]:
    """Views of every object (or of `names`), in catalogue order."""
    cat = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    wanted = [cat.get(n).name for n in names] if names else cat.names()
    return [object_views(n, params, cat, cache_dir) for n in wanted]


def views_from_config(toy_cfg, names: list[str] | None = None) -> list[ObjectViews]:  # noqa: ANN001
    """Convenience for stages: views of the configured catalogue with the configured parameters."""
    return catalogue_views(ViewParams.from_config(toy_cfg), toy_cfg.catalogue or None,
                           toy_cfg.cache_dir or None, names)
