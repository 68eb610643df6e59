"""Toy-world metrics: how close an asset is to the catalogue object its prompt names.

The toy world has ground truth, so an asset is compared with its object's Gaussians
(stages.toyworld.catalogue.build_object) rendered on the same evaluation cameras
(stages.render.eval_cameras: the `render` section), in float (no PNG quantisation):
- toy_psnr: mean over views of per-view PSNR (images in [0,1]; per-view MSE floored at 1e-10, so
  a perfect asset scores 100 dB, not infinity).
- toy_psnr_yaw: the same after the best cyclic shift of the orbit (azimuth steps of 360/num_views).
  Why: a prior without camera input only pins the object's orientation through the view suffixes,
  so a correct object turned about the up axis is a yaw error, not a wrong object.
- toy_iou: silhouette IoU (alpha > 0.5), summed over views.
- toy_rprec: 1.0 when, among all catalogue objects, the one with the smallest yaw-aligned RGB MSE
  is the prompt's own object, else 0.0 (averaged over assets it is R-precision at R=1).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from kernels.gaussians import Gaussians
from common.config import Config, RenderConfig
from stages.render import eval_cameras, render_views
from common.storage import atomic_path

log = logging.getLogger(__name__)

MSE_FLOOR = 1e-10  # -> 100 dB cap
_GT_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def psnr_per_view(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(V,) PSNR in dB of (V,H,W,C) images in [0,1]."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1).clamp_min(MSE_FLOOR)
    return -10.0 * torch.log10(mse)


def shifted_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(V,) mean MSE over views between a[i] and b[(i + k) % V] for every shift k."""
    V = a.shape[0]
    return torch.stack([((a.double() - torch.roll(b, -k, 0).double()) ** 2).mean() for k in range(V)])


def silhouette_iou(alpha_a: torch.Tensor, alpha_b: torch.Tensor, thresh: float = 0.5) -> float:
    ma, mb = alpha_a > thresh, alpha_b > thresh
    union = (ma | mb).sum().item()
    return 1.0 if union == 0 else (ma & mb).sum().item() / union


def _render_key(rc: RenderConfig) -> tuple:
    return (rc.num_views, rc.elevation_deg, rc.radius, rc.fovy, rc.resolution, tuple(rc.background),
            rc.backend)


def ground_truth_views(key: str, build: Callable[[], Gaussians], rc: RenderConfig,
                       cache_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb, alpha) of a ground-truth object on the evaluation orbit.

    Cached per process and, when `cache_dir` is given, on disk by content hash (object spec +
    orbit): R-precision needs every catalogue object, which would otherwise be re-rendered by
    every worker process."""
    k = (key, _render_key(rc))
    if k in _GT_CACHE:
        return _GT_CACHE[k]
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(repr(k).encode()).hexdigest()[:16]
        path = Path(cache_dir) / "toy_gt" / f"{digest}.safetensors"
        if path.exists():
            t = load_file(str(path))
            _GT_CACHE[k] = (t["rgb"], t["alpha"])
            return _GT_CACHE[k]
    rgb, alpha = render_views(build(), eval_cameras(rc), rc)
    _GT_CACHE[k] = (rgb, alpha)
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({"rgb": rgb.contiguous(), "alpha": alpha.contiguous()}, tmp)
    return _GT_CACHE[k]


class ToyWorld:
    """The catalogue's objects by prompt (a test can pass any mapping name -> builder)."""

    def __init__(self, objects: dict[str, tuple[str, Callable[[], Gaussians]]],
                 lookup: Callable[[str], str], cache_dir: Path | None = None) -> None:
        self.objects = objects  # name -> (content key, builder)
        self.lookup = lookup  # prompt -> name (raises with a clear message if unknown)
        self.cache_dir = cache_dir  # on-disk ground-truth renders (None = per process only)

    @classmethod
    def from_config(cls, cfg: Config) -> "ToyWorld":
        from stages.toyworld.catalogue import build_object, load_catalogue

        cat = load_catalogue(cfg.toy.catalogue or None)
        objs = {o.name: (o.content_hash(), (lambda o=o: build_object(o.name, cat))) for o in cat.objects}
        from stages.toyworld.views import resolve_cache_dir

        return cls(objs, lambda prompt: cat.get(prompt).name, resolve_cache_dir(cfg.toy.cache_dir or None))


def toy_metrics(cfg: Config, asset: Gaussians, prompt: str, world: ToyWorld | None = None,
                rprec: bool = True) -> dict[str, float]:
    """toy_psnr, toy_psnr_yaw, toy_iou and (if `rprec`) toy_rprec of one asset."""
    world = world or ToyWorld.from_config(cfg)
    rc = cfg.render
    own = world.lookup(prompt)
    rgb, alpha = render_views(asset, eval_cameras(rc), rc)
    gt_rgb, gt_alpha = ground_truth_views(world.objects[own][0], world.objects[own][1], rc,
                                          world.cache_dir)
    out = {
        "toy_psnr": float(psnr_per_view(rgb, gt_rgb).mean()),
        "toy_psnr_yaw": 0.0,
        "toy_iou": float(silhouette_iou(alpha, gt_alpha)),
    }
    own_shift = shifted_mse(rgb, gt_rgb)
    k = int(own_shift.argmin())
    out["toy_psnr_yaw"] = float(psnr_per_view(rgb, torch.roll(gt_rgb, -k, 0)).mean())
    if rprec:
        dists = {}
        for name, (key, build) in world.objects.items():
            other = gt_rgb if name == own else ground_truth_views(key, build, rc, world.cache_dir)[0]
            dists[name] = float(shifted_mse(rgb, other).min())
        nearest = min(dists, key=dists.get)
        out["toy_rprec"] = 1.0 if nearest == own else 0.0
        if nearest != own:
            log.info("toy_rprec: %r is nearest to %r (mse %.4f) not %r (mse %.4f)", prompt, nearest,
                     dists[nearest], own, dists[own])
    return out
