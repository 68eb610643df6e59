"""Initial Gaussians for a prompt: Point-E (the authors' choice), a random ball, or a toy shape.

Only geometry is initialised: colours start near grey (LucidDreamer's f_dc = U(0, 1)/255) for
every method, because Point-E colours are unused in the spec and a toy shape must not leak the
answer's colour into a toy-world score. Opacity starts at `initial_opacity` (0.1), rotations at
identity, scales from the mean distance to the 3 nearest neighbours (3DGS), unless set.
"""

from __future__ import annotations

from common.errors import UserError
import logging
import math
import os
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from kernels.gaussians import Gaussians
from stages.point_e_weights import POINT_E_COMMIT, CheckpointError, discard, fetch_checkpoint, point_e_cache_dir

if TYPE_CHECKING:  # pragma: no cover
    from common.config import InitConfig

log = logging.getLogger(__name__)

# Point-E at a pinned commit, without its dependencies: the ones its used modules import are the
# project's own, except `clip`, which comes pinned from PyPI (openai-clip 1.0.1: OpenAI's CLIP code,
# the `clip.load(name, device, download_root=...)` / `clip.tokenize` API Point-E calls) instead of
# Point-E's unpinned `clip @ git+https://github.com/openai/CLIP.git`, which would install a second
# distribution over the same `clip` module.
POINT_E_INSTALL = ('pip install --no-deps openai-clip==1.0.1 "point-e @ git+https://github.com/openai/point-e.git'
                   f'@{POINT_E_COMMIT}"')


class InitError(UserError, RuntimeError):
    """An init method that cannot run here; the message names the fix and the fallback."""


# ----------------------------------------------------------------------------------------------
# Geometry helpers (pure tensor code)
# ----------------------------------------------------------------------------------------------
def sample_ball(n: int, radius: float, generator: torch.Generator) -> Tensor:
    """LucidDreamer's 'sphere' init: theta ~ U(0, pi), phi ~ U(0, 2pi), r ~ U(0, radius).

    Uniform in r (not r^3), so points are denser near the centre, as in the authors' code.
    """
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    theta, phi, r = u[:, 0] * math.pi, u[:, 1] * 2 * math.pi, u[:, 2] * radius
    xyz = torch.stack([r * torch.sin(theta) * torch.sin(phi), r * torch.sin(theta) * torch.cos(phi),
                       r * torch.cos(theta)], dim=-1)
    return xyz.float()


def expand_points(points: Tensor, per_point: int, radius: float, generator: torch.Generator) -> Tensor:
    """Each point -> `per_point` points in a ball of `radius` around it ((N, 3) -> (N * per_point, 3)).

    As in LucidDreamer's Point-E init, one set of `per_point` offsets is drawn and shared by all
    points; point i's copies are rows i*per_point .. (i+1)*per_point - 1.
    """
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"expand_points: expected (N, 3) points, got {tuple(points.shape)}")
    offsets = sample_ball(per_point, radius, generator).to(points)
    return (points[:, None, :] + offsets[None, :, :]).reshape(-1, 3)


def knn_mean_sq_dist_reference(points: Tensor, k: int = 3) -> Tensor:
    """Pure-PyTorch reference of `knn_mean_sq_dist` (O(N^2) memory; tests and small N)."""
    d = torch.cdist(points.double(), points.double()) ** 2
    d.fill_diagonal_(float("inf"))
    return d.topk(min(k, points.shape[0] - 1), largest=False).values.mean(dim=1).float()


def knn_mean_sq_dist_chunked(points: Tensor, k: int = 3, rows: int = 512) -> Tensor:
    """The same exact numbers without scipy: brute force in float64, `rows` points at a time (on
    the GPU when there is one: 81,920 points take well under a second there)."""
    dev = torch.device("cuda") if torch.cuda.is_available() else points.device
    p = points.detach().to(dev, torch.float64)
    kk = min(k, p.shape[0] - 1)
    out = []
    for i in range(0, p.shape[0], rows):
        d = torch.cdist(p[i:i + rows], p) ** 2
        d[torch.arange(d.shape[0], device=dev), torch.arange(i, i + d.shape[0], device=dev)] = float("inf")
        out.append(d.topk(kk, largest=False).values.mean(dim=1))
    return torch.cat(out).float().cpu()


def knn_mean_sq_dist(points: Tensor, k: int = 3) -> Tensor:
    """Mean squared distance to the k nearest other points (3DGS `distCUDA2`), via a KD-tree."""
    n = points.shape[0]
    if n < 2:
        return torch.full((n,), 1e-4)
    try:
        from scipy.spatial import cKDTree
    except ImportError:  # a generation-only install (the GPU check carries no scipy)
        return knn_mean_sq_dist_chunked(points, k)

    p = points.detach().cpu().double().numpy()
    kk = min(k, n - 1)
    dist, _ = cKDTree(p).query(p, k=kk + 1)
    return torch.from_numpy((dist[:, 1:] ** 2).mean(axis=1)).float()


def gaussians_from_points(points: Tensor, cfg: "InitConfig", generator: torch.Generator) -> Gaussians:
    """3DGS `create_from_pcd` with LucidDreamer's near-grey random colours (no input colours)."""
    n = points.shape[0]
    if cfg.initial_scale > 0:
        log_s = torch.full((n, 3), math.log(cfg.initial_scale))
    else:
        d2 = knn_mean_sq_dist(points).clamp_min(1e-7)
        log_s = torch.log(torch.sqrt(d2))[:, None].repeat(1, 3)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    op = float(cfg.initial_opacity)
    if not 0.0 < op < 1.0:
        raise ValueError(f"init.initial_opacity={op}: must be strictly between 0 and 1")
    k = (cfg.sh_degree + 1) ** 2
    sh = torch.zeros(n, k, 3)
    sh[:, 0] = torch.rand(n, 3, generator=generator) / 255.0  # f_dc: colour ~ 0.5 grey
    return Gaussians(means=points.float().contiguous(), log_scales=log_s, quats=quats,
                     opacity_logits=torch.full((n,), math.log(op / (1.0 - op))), sh=sh, sh_degree=cfg.sh_degree)


# ----------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------
def ball_points(cfg: "InitConfig", generator: torch.Generator) -> Tensor:
    return sample_ball(cfg.ball_num_gaussians, cfg.ball_radius, generator)


def toy_shape_points(cfg: "InitConfig", prompt: str, generator: torch.Generator,
                     catalogue: str | None = None) -> Tensor:
    """A coarse shape prior from the toy world: the object's surface points, resampled and blurred.

    Points are drawn (with replacement, by opacity) from the catalogue object's Gaussian centres
    and moved by N(0, shape_noise^2): the silhouette is roughly right, details and colour are not.
    """
    from stages.toyworld.catalogue import build_object

    obj = build_object(prompt, catalogue or None)
    w = obj.opacities.double()
    idx = torch.multinomial(w / w.sum(), cfg.ball_num_gaussians, replacement=True, generator=generator)
    pts = obj.means[idx].double() * cfg.shape_scale
    pts = pts + cfg.shape_noise * torch.randn(pts.shape, generator=generator, dtype=torch.float64)
    return pts.float()


def point_e_available() -> bool:
    try:
        import point_e  # noqa: F401
    except ImportError:
        return False
    return True


def _point_e_missing_error() -> InitError:
    return InitError(
        "init.method=point_e needs the optional Point-E package, which is not installed (it is not on "
        f"PyPI): {POINT_E_INSTALL} (its weights download once from openaipublic). "
        "Or choose a fallback: --set init.method=ball (random ball, LucidDreamer style) or "
        "init.method=toy_shape (toy-world prompts only).")


def check_requirements(cfg: "InitConfig") -> None:
    """Fail before any asset runs (and before the prior loads) when `cfg.method` cannot run here.

    Raises InitError with the one-line fix; ball and toy_shape need nothing beyond the package."""
    if cfg.method == "point_e" and not point_e_available():
        raise _point_e_missing_error()
    if cfg.method not in INIT_METHODS:
        raise InitError(f"init.method={cfg.method!r} is unknown; use one of {', '.join(sorted(INIT_METHODS))}")


def point_e_points(cfg: "InitConfig", prompt: str, generator: torch.Generator,
                   device: str | torch.device | None = None) -> Tensor:
    """Point-E base40M-textvec + upsampler -> `num_points` (4096) xyz, converted to our y-up world."""
    if not point_e_available():
        raise _point_e_missing_error()
    from point_e.diffusion.configs import DIFFUSION_CONFIGS, diffusion_from_config
    from point_e.diffusion.sampler import PointCloudSampler
    from point_e.models.configs import MODEL_CONFIGS, model_from_config
    from point_e.models.download import MODEL_PATHS

    cache = point_e_cache_dir()  # this node's project cache, never the worker's cwd

    def load_checkpoint(name: str, model: torch.nn.Module, dev: torch.device) -> None:
        # a verified download (HTTP status, length, size + SHA-256 before use), a weights-only load
        path = fetch_checkpoint(name, MODEL_PATHS[name], cache)
        try:
            model.load_state_dict(torch.load(path, map_location=dev, weights_only=True))
        except Exception as e:
            discard(path)  # an unloadable file must not break every later asset on this node
            raise CheckpointError(f"Point-E checkpoint {name} at {path} could not be loaded "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it was "
                                  f"removed and downloads again on the next use") from e

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base_name = "base40M-textvec"
    # cache_dir: where each model's CLIP ViT-L/14 downloads (clip.load's download_root; both models
    # build one); Point-E's default is <cwd>/point_e_model_cache
    base = model_from_config({**MODEL_CONFIGS[base_name], "cache_dir": str(cache)}, dev).eval()
    load_checkpoint(base_name, base, dev)
    up = model_from_config({**MODEL_CONFIGS["upsample"], "cache_dir": str(cache)}, dev).eval()
    load_checkpoint("upsample", up, dev)
    sampler = PointCloudSampler(
        device=dev, models=[base, up],
        diffusions=[diffusion_from_config(DIFFUSION_CONFIGS[base_name]), diffusion_from_config(DIFFUSION_CONFIGS["upsample"])],
        num_points=[1024, cfg.num_points - 1024], aux_channels=["R", "G", "B"], guidance_scale=[3.0, 0.0],
        model_kwargs_key_filter=("texts", ""))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # Point-E samples from the global RNG
        samples = None
        for samples in sampler.sample_batch_progressive(batch_size=1, model_kwargs=dict(texts=[prompt])):
            pass
    coords = torch.as_tensor(np.asarray(sampler.output_to_point_clouds(samples)[0].coords), dtype=torch.float32)
    return point_e_to_world(coords) * cfg.shape_scale


def point_e_to_world(xyz: Tensor) -> Tensor:
    """Point-E's z-up coordinates -> this project's y-up world (x stays, y_up = z, z = -y)."""
    return torch.stack([xyz[:, 0], xyz[:, 2], -xyz[:, 1]], dim=-1)


InitMethod = Callable[["InitConfig", str, torch.Generator, "str | None"], Tensor]


def _ball(cfg: "InitConfig", prompt: str, generator: torch.Generator, toy_catalogue: str | None) -> Tensor:
    return ball_points(cfg, generator)


def _toy_shape(cfg: "InitConfig", prompt: str, generator: torch.Generator, toy_catalogue: str | None) -> Tensor:
    return toy_shape_points(cfg, prompt, generator, toy_catalogue)


def _point_e(cfg: "InitConfig", prompt: str, generator: torch.Generator, toy_catalogue: str | None) -> Tensor:
    return expand_points(point_e_points(cfg, prompt, generator), cfg.gaussians_per_point, cfg.point_radius,
                         generator)


# init.method -> (cfg, prompt, generator, toy catalogue) -> initial points; the one list of init
# names (the config is validated against it, `pipeline.validate`)
INIT_METHODS: dict[str, InitMethod] = {"point_e": _point_e, "ball": _ball, "toy_shape": _toy_shape}
# the config keys each init method reads (stages.generation_id hashes exactly these into asset ids)
_POINTS = ("init.method", "init.initial_opacity", "init.initial_scale", "init.sh_degree")
INIT_KEYS: dict[str, tuple[str, ...]] = {
    "point_e": _POINTS + ("init.num_points", "init.gaussians_per_point", "init.point_radius", "init.shape_scale"),
    "ball": _POINTS + ("init.ball_num_gaussians", "init.ball_radius"),
    "toy_shape": _POINTS + ("init.ball_num_gaussians", "init.shape_scale", "init.shape_noise", "toy.catalogue"),
}


def init_gaussians(cfg: "InitConfig", prompt: str, generator: torch.Generator,
                   toy_catalogue: str | None = None) -> Gaussians:
    """Initial Gaussians (CPU, float32) for `prompt` by `cfg.method` (a name in `INIT_METHODS`)."""
    points = INIT_METHODS.get(cfg.method)
    if points is None:
        raise ValueError(f"init.method={cfg.method!r} is unknown; use one of {', '.join(sorted(INIT_METHODS))}")
    pts = points(cfg, prompt, generator, toy_catalogue)
    g = gaussians_from_points(pts, cfg, generator)
    log.info("init %s: %d Gaussians for %r", cfg.method, g.num(), prompt)
    return g
