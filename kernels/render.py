"""One differentiable Gaussian-splat renderer, two interchangeable backends (gsplat's shape).

`rasterize()` is the functional entry point, shaped like `gsplat.rasterization()`: plain tensors
in (activated scales and opacities, wxyz quaternions, world-to-camera `viewmats` (C, 4, 4), pixel
intrinsics `Ks` (C, 3, 3), colours or SH coefficients with `sh_degree`), one `RenderOutput` out.
`render(g, cams)` is a thin wrapper that unpacks a `Gaussians` and a `Cameras` into it.

One `RasterSettings` drives both backends, with gsplat's values as defaults:
- "torch" (`_rasterize_torch`, the reference): pure PyTorch (CPU or GPU, autograd). EWA splatting
  like gsplat/3DGS: 3D covariance -> 2D with the perspective Jacobian, + `eps2d` low-pass,
  front-to-back compositing in depth order, alpha clamp 0.999, skip alpha < 1/255, stop once
  transmittance falls to 1e-4. It only visits the pixels where a Gaussian's alpha can reach 1/255
  (an exact per-row ellipse span), sorts the (pixel, Gaussian) pairs by pixel then depth, and gets
  transmittance from a segmented cumulative sum of log(1 - alpha). Pairs are processed in
  pixel-aligned chunks; above `chunk_pairs` each chunk is recomputed in backward (activation
  checkpointing), so memory stays bounded.
- "gsplat" (`_rasterize_gsplat`): `gsplat.rasterization` (CUDA), render_mode "RGB+ED", given the
  settings' `eps2d` and `radius_clip` and the call's near/far planes. Its kernel fixes
  alpha_clamp, min_alpha, transmittance_eps and radius_sigmas; settings that differ from those are
  refused (ValueError) rather than silently ignored, so the same settings give the same image.
- "auto": gsplat when the Gaussians live on CUDA and gsplat's CUDA extension loads, else torch.
  Whether the extension loads is found out once per process (a failed build is not retried on every
  render, and it is one WARNING, not one per render); `resolve_backend` names the backend a render
  uses, so callers can record it (meta.json, the manifest's `renderer` column).

Remaining backend difference: gsplat shrinks each Gaussian's reported radius with its opacity
(extend = min(3.33, sqrt(2 ln(opacity * 255)))) and culls opacity < 1/255 in `radii`; the torch
backend reports the 3.33-sigma radius (those Gaussians still add nothing to the image).

Both return `RenderOutput` with `means2d` (C, N, 2) in pixels; while autograd is recording,
`means2d.retain_grad()` has been called so densification can read the view-space gradient.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kernels.cameras import Cameras, viewmat_centers
from kernels.gaussians import SH_C0, Gaussians, quat_to_rotmat

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "gsplat")


@dataclass
class RenderOutput:
    rgb: Tensor  # (C, H, W, D) composited over the background (D = 3 for RGB / SH colours)
    alpha: Tensor  # (C, H, W, 1)
    depth: Tensor  # (C, H, W, 1) expected camera-z depth: sum(w z) / sum(w), 0 where alpha = 0
    means2d: Tensor  # (C, N, 2) projected centres in pixels (grad retained when training)
    radii: Tensor  # (C, N) pixel radius (int32), 0 = not visible


@dataclass
class RasterSettings:
    """Rasteriser constants shared by both backends (defaults = gsplat 1.5's CUDA kernel)."""

    eps2d: float = 0.3  # low-pass added to the 2D covariance (pixels^2); gsplat `eps2d`
    radius_clip: float = 0.0  # skip Gaussians whose pixel radius is <= this; gsplat `radius_clip`
    # fixed inside gsplat's kernel (the gsplat backend refuses other values):
    alpha_clamp: float = 0.999  # gsplat's min(0.999, alpha); original 3DGS clamps at 0.99
    min_alpha: float = 1.0 / 255.0
    transmittance_eps: float = 1e-4  # stop compositing once T would fall to this
    radius_sigmas: float = 3.33  # reported radii and culling box, like gsplat
    # torch backend only (memory, not the image):
    chunk_pairs: int = 4_000_000  # (pixel, Gaussian) pairs per chunk


# RasterSettings fields gsplat's CUDA kernel hard-codes, with its values
GSPLAT_FIXED = {"alpha_clamp": 0.999, "min_alpha": 1.0 / 255.0, "transmittance_eps": 1e-4,
                "radius_sigmas": 3.33}


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backend: str = "auto",
    settings: RasterSettings | None = None,
) -> RenderOutput:
    """Render N Gaussians into C pinhole cameras; arguments as in `gsplat.rasterization()`.

    means (N, 3); quats (N, 4) wxyz, unnormalised; scales (N, 3) and opacities (N,) activated;
    colors: with `sh_degree=None` post-activation features (N, D) or (C, N, D), else SH
    coefficients (N, K, 3) or (C, N, K, 3) with (sh_degree + 1)^2 <= K (colour = SH + 0.5,
    clamped at 0, along the camera-to-Gaussian direction); viewmats (C, 4, 4) world-to-camera;
    Ks (C, 3, 3); backgrounds (C, D), default black. Cameras are moved to the means' device/dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"render: unknown backend {backend!r}; choose one of {BACKENDS}")
    if not 0.0 < near_plane < far_plane:
        raise ValueError(f"render: need 0 < near < far, got near={near_plane}, far={far_plane}")
    s = settings or RasterSettings()
    dev, dt = means.device, means.dtype
    N = means.shape[0] if means.dim() == 2 else -1
    C = viewmats.shape[0] if viewmats.dim() == 3 else -1
    for name, t, shape in (("means", means, (N, 3)), ("quats", quats, (N, 4)), ("scales", scales, (N, 3)),
                           ("opacities", opacities, (N,)), ("viewmats", viewmats, (C, 4, 4)),
                           ("Ks", Ks, (C, 3, 3))):
        if tuple(t.shape) != shape or N < 0 or C < 0:
            raise ValueError(f"rasterize: {name} has shape {tuple(t.shape)}, expected {shape} (N={N}, C={C})")
    lead = tuple(colors.shape[:-1] if sh_degree is None else colors.shape[:-2])
    if (lead not in ((N,), (C, N)) or colors.dim() < 2
            or (sh_degree is not None and (colors.shape[-1] != 3 or (sh_degree + 1) ** 2 > colors.shape[-2]))):
        want = "(N, D) or (C, N, D)" if sh_degree is None else f"(N, K, 3) or (C, N, K, 3) with K >= {(sh_degree + 1) ** 2}"
        raise ValueError(f"rasterize: colors has shape {tuple(colors.shape)}, expected {want} "
                         f"(N={N}, C={C}, sh_degree={sh_degree})")
    D = 3 if sh_degree is not None else colors.shape[-1]
    if backgrounds is None:
        backgrounds = torch.zeros(C, D, device=dev, dtype=dt)
    elif tuple(backgrounds.shape) != (C, D):
        raise ValueError(f"rasterize: backgrounds has shape {tuple(backgrounds.shape)}, expected ({C}, {D})")
    viewmats, Ks, backgrounds = viewmats.to(dev, dt), Ks.to(dev, dt), backgrounds.to(dev, dt)
    backend = resolve_backend(backend, dev)
    if backend == "gsplat":
        _check_gsplat_settings(s)
        if dev.type != "cuda":
            raise RuntimeError(
                f"render: backend 'gsplat' needs CUDA tensors, Gaussians are on {dev}; "
                "move them with .to('cuda') or use backend='torch'"
            )
        out = _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                sh_degree, near_plane, far_plane, s)
    else:
        out = _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                               sh_degree, near_plane, far_plane, s)
    out.rgb = out.rgb + (1.0 - out.alpha) * backgrounds[:, None, None, :]
    return out


def render(
    g: Gaussians,
    cams: Cameras,
    background: Tensor | None = None,
    backend: str = "auto",
    near: float = 0.01,
    far: float = 1e3,
    settings: RasterSettings | None = None,
) -> RenderOutput:
    """Render `g` from every camera in `cams`; background (B,3) or (3,), default black.

    A convenience wrapper over `rasterize()` (activated parameters, SH of degree g.sh_degree)."""
    B = len(cams)
    dev, dt = g.means.device, g.means.dtype
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, device=dev, dtype=dt)
        if bg.shape == (3,):
            bg = bg.expand(B, 3)
        if bg.shape != (B, 3):
            raise ValueError(f"render: background must be (3,) or ({B}, 3), got {tuple(bg.shape)}")
    return rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, cams.viewmats, cams.Ks, cams.width,
                     cams.height, sh_degree=g.sh_degree, backgrounds=bg, near_plane=near, far_plane=far,
                     backend=backend, settings=settings)


def _check_gsplat_settings(s: RasterSettings) -> None:
    """Refuse settings gsplat's CUDA kernel cannot honour (it hard-codes them)."""
    for name, fixed in GSPLAT_FIXED.items():
        got = getattr(s, name)
        if not math.isclose(got, fixed, rel_tol=1e-9, abs_tol=0.0):
            raise ValueError(f"render: backend 'gsplat' fixes RasterSettings.{name}={fixed:g} in its CUDA "
                             f"kernel, got {got:g}; use backend='torch' or the default {name}")


_GSPLAT: dict[str, object] = {}  # per process: {"ok": bool, "reason": str} once gsplat was tried


def gsplat_available() -> bool:
    """True when gsplat's CUDA rasteriser can run here; decided once per process.

    Why once: importing the extension may JIT-compile it (minutes, inside an asset's timeout) and a
    failed build would otherwise be retried, and warned about, on every render."""
    if not torch.cuda.is_available():
        return False
    if "ok" not in _GSPLAT:
        try:
            from gsplat.cuda._backend import _C  # noqa: F401  (the compiled extension)
            ok, reason = _C is not None, "" if _C is not None else "gsplat.cuda._backend._C is None"
        except Exception as exc:  # noqa: BLE001 - ImportError or a build failure: remembered, warned once
            last = (str(exc).strip().splitlines() or [""])[-1]
            ok, reason = False, f"{type(exc).__name__}: {last}"[:300]
        _GSPLAT.update(ok=ok, reason=reason)
        if not ok:
            log.warning("gsplat CUDA extension unavailable (%s); rendering with the torch backend "
                        "(slower; recorded as renderer=torch in meta.json and the manifest)", reason)
    return bool(_GSPLAT["ok"])


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend `render(..., backend=backend)` uses for Gaussians on `device`: 'torch' or 'gsplat'."""
    if backend not in BACKENDS:
        raise ValueError(f"render: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "gsplat" if (torch.device(device).type == "cuda" and gsplat_available()) else "torch"
    return backend


# ----------------------------------------------------------------------------------------------
# Projection (EWA)
# ----------------------------------------------------------------------------------------------
@dataclass
class Projection:
    means2d: Tensor  # (B, N, 2)
    conics: Tensor  # (B, N, 3): sigma = 0.5 (a dx^2 + c dy^2) + b dx dy
    cov2d: Tensor  # (B, N, 3): (xx, xy, yy) incl. the low-pass
    depths: Tensor  # (B, N) camera z
    radii: Tensor  # (B, N) int32, 0 = culled


def project(means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor,
            width: int, height: int, eps2d: float, near: float, far: float,
            radius_sigmas: float = 3.33, radius_clip: float = 0.0) -> Projection:
    """EWA projection of N Gaussians into B pinhole cameras (gsplat's convention and clamping);
    a Gaussian whose pixel radius is <= radius_clip is culled, as in gsplat."""
    R = quat_to_rotmat(quats)
    M = R * scales[:, None, :]
    cov3 = M @ M.transpose(1, 2)  # (N, 3, 3)
    Rv, tv = viewmats[:, :3, :3], viewmats[:, :3, 3]
    mc = torch.einsum("bij,nj->bni", Rv, means) + tv[:, None, :]  # (B, N, 3)
    covc = torch.einsum("bij,njk,blk->bnil", Rv, cov3, Rv)  # (B, N, 3, 3)
    tx, ty, tz = mc.unbind(-1)
    in_depth = (tz > near) & (tz < far)
    tzs = torch.where(in_depth, tz, torch.ones_like(tz))  # keep culled Gaussians finite (no NaN grads)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    lim_xp = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_xn = cx / fx + 0.3 * (0.5 * width / fx)
    lim_yp = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_yn = cy / fy + 0.3 * (0.5 * height / fy)
    u, v = tx / tzs, ty / tzs
    uc = torch.minimum(torch.maximum(u, -lim_xn), lim_xp)
    vc = torch.minimum(torch.maximum(v, -lim_yn), lim_yp)
    # J = [[fx/z, 0, -fx uc/z], [0, fy/z, -fy vc/z]]
    j00, j02 = fx / tzs, -fx * uc / tzs
    j11, j12 = fy / tzs, -fy * vc / tzs
    c = covc
    a_ = j00 * j00 * c[..., 0, 0] + 2 * j00 * j02 * c[..., 0, 2] + j02 * j02 * c[..., 2, 2]
    b_ = (j00 * j11 * c[..., 0, 1] + j00 * j12 * c[..., 0, 2] + j02 * j11 * c[..., 2, 1]
          + j02 * j12 * c[..., 2, 2])
    d_ = j11 * j11 * c[..., 1, 1] + 2 * j11 * j12 * c[..., 1, 2] + j12 * j12 * c[..., 2, 2]
    a_, d_ = a_ + eps2d, d_ + eps2d
    det = (a_ * d_ - b_ * b_).clamp_min(1e-10)
    conics = torch.stack([d_ / det, -b_ / det, a_ / det], dim=-1)
    means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)
    with torch.no_grad():
        rx = torch.ceil(radius_sigmas * torch.sqrt(a_.clamp_min(0)))
        ry = torch.ceil(radius_sigmas * torch.sqrt(d_.clamp_min(0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        r = torch.maximum(rx, ry)
        ok = in_depth & inside & ((a_ * d_ - b_ * b_) > 0) & (r > radius_clip)
        radii = torch.where(ok, r, torch.zeros_like(rx)).to(torch.int32)
    return Projection(means2d, conics, torch.stack([a_, b_, d_], -1), tz, radii)


# ----------------------------------------------------------------------------------------------
# Spherical harmonics (view-dependent colour for sh_degree > 0)
# ----------------------------------------------------------------------------------------------
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def eval_sh(deg: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """RGB from SH coefficients sh (..., K, 3) along unit-normalised dirs (..., 3); 3DGS layout."""
    res = SH_C0 * sh[..., 0, :]
    if deg < 1:
        return res
    x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
    x, y, z = x[..., None], y[..., None], z[..., None]
    res = res - _C1 * y * sh[..., 1, :] + _C1 * z * sh[..., 2, :] - _C1 * x * sh[..., 3, :]
    if deg < 2:
        return res
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    res = (res + _C2[0] * xy * sh[..., 4, :] + _C2[1] * yz * sh[..., 5, :]
           + _C2[2] * (2 * zz - xx - yy) * sh[..., 6, :] + _C2[3] * xz * sh[..., 7, :]
           + _C2[4] * (xx - yy) * sh[..., 8, :])
    if deg < 3:
        return res
    return (res + _C3[0] * y * (3 * xx - yy) * sh[..., 9, :] + _C3[1] * xy * z * sh[..., 10, :]
            + _C3[2] * y * (4 * zz - xx - yy) * sh[..., 11, :]
            + _C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12, :]
            + _C3[4] * x * (4 * zz - xx - yy) * sh[..., 13, :] + _C3[5] * z * (xx - yy) * sh[..., 14, :]
            + _C3[6] * x * (xx - 3 * yy) * sh[..., 15, :])


def view_colors(colors: Tensor, sh_degree: int | None, means: Tensor, viewmats: Tensor) -> Tensor:
    """(C, N, D) per-view features: `colors` as given (sh_degree None), else SH + 0.5 clamped at 0
    (DC only for degree 0, else along the camera-to-Gaussian direction), as gsplat does."""
    C = viewmats.shape[0]
    if sh_degree is None:
        return colors if colors.dim() == 3 else colors[None].expand(C, -1, -1)
    if sh_degree == 0:
        dc = torch.clamp_min(SH_C0 * colors[..., 0, :] + 0.5, 0.0)
        return dc if dc.dim() == 3 else dc[None].expand(C, -1, -1)
    dirs = means[None] - viewmat_centers(viewmats)[:, None, :]
    sh = colors if colors.dim() == 4 else colors[None].expand(C, -1, -1, -1)
    return torch.clamp_min(eval_sh(sh_degree, sh, dirs) + 0.5, 0.0)


# ----------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------
def _excl_cumsum(x: Tensor) -> Tensor:
    c = torch.cumsum(x, 0)
    return c - x


@torch.no_grad()
def _pixel_pairs(proj: Projection, opac: Tensor, width: int, height: int, min_alpha: float
                 ) -> tuple[Tensor, Tensor]:
    """(flat view-Gaussian index, flat pixel index) of every pair where alpha can reach min_alpha,
    sorted by pixel, then front to back."""
    B, N = proj.depths.shape
    dev = proj.depths.device
    smax = torch.log(opac.detach() / min_alpha)  # sigma bound: opac*exp(-sigma) >= min_alpha
    vis = (proj.radii > 0) & (smax > 0)[None, :]
    b_idx, n_idx = vis.nonzero(as_tuple=True)
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    if b_idx.numel() == 0:
        return empty, empty
    d = proj.depths.detach()[b_idx, n_idx]
    order = torch.argsort(d, stable=True)
    order = order[torch.argsort(b_idx[order], stable=True)]  # by camera, then depth
    b_idx, n_idx = b_idx[order], n_idx[order]
    flat = b_idx * N + n_idx
    m = proj.means2d.detach().reshape(-1, 2)[flat]
    cov = proj.cov2d.detach().reshape(-1, 3)[flat]
    con = proj.conics.detach().reshape(-1, 3)[flat]
    s = smax[n_idx] * (1 + 1e-3) + 1e-6  # pad the span; the exact alpha test happens per pair
    # rows: |y + 0.5 - my| <= sqrt(2 s cov_yy)
    hy = torch.sqrt(2 * s * cov[:, 2])
    y0 = torch.ceil(m[:, 1] - hy - 0.5).clamp_min(0)
    y1 = torch.floor(m[:, 1] + hy - 0.5).clamp_max(height - 1)
    ny = (y1 - y0 + 1).clamp_min(0).long()
    rep = torch.repeat_interleave(torch.arange(flat.numel(), device=dev), ny)
    if rep.numel() == 0:
        return empty, empty
    y = y0.long()[rep] + (torch.arange(rep.numel(), device=dev) - _excl_cumsum(ny)[rep])
    dy = y.to(m.dtype) + 0.5 - m[rep, 1]
    a, b, c = con[rep, 0], con[rep, 1], con[rep, 2]
    # columns of this row: 0.5 a dx^2 + b dy dx + 0.5 c dy^2 <= s
    disc = (b * b - a * c) * dy * dy + 2 * a * s[rep]
    half = torch.sqrt(disc.clamp_min(0)) / a
    xc = m[rep, 0] - b * dy / a
    x0 = torch.ceil(xc - half - 0.5).clamp_min(0)
    x1 = torch.floor(xc + half - 0.5).clamp_max(width - 1)
    nx = torch.where(disc >= 0, x1 - x0 + 1, torch.zeros_like(x1)).clamp_min(0).long()
    rep2 = torch.repeat_interleave(torch.arange(rep.numel(), device=dev), nx)
    x = x0.long()[rep2] + (torch.arange(rep2.numel(), device=dev) - _excl_cumsum(nx)[rep2])
    vid = rep[rep2]
    pix = b_idx[vid] * (height * width) + y[rep2] * width + x
    pix, perm = torch.sort(pix, stable=True)  # stable: keeps front-to-back order within a pixel
    return flat[vid][perm], pix


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    # index_select's backward is a serial index_add on CPU: deterministic, unlike x[idx]
    return x.index_select(0, idx)


def _composite(m2d: Tensor, conics: Tensor, opac: Tensor, feats: Tensor, gid: Tensor, px: Tensor,
               py: Tensor, seg: Tensor, seg_start: Tensor, counts: Tensor, alpha_clamp: float,
               min_alpha: float, log_t_eps: float) -> Tensor:
    """Per-pixel sums (n_seg, F+1) of w*feats and w for pairs sorted by pixel then depth.

    Pairs of a pixel are contiguous, so the sums are segment reductions: deterministic on every
    device and thread count (no scatter-add), which makes resumed runs bit-identical."""
    mu = _gather(m2d, gid)
    dx, dy = px - mu[:, 0], py - mu[:, 1]
    con = _gather(conics, gid)
    sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
    alpha = torch.clamp_max(_gather(opac, gid) * torch.exp(-sigma), alpha_clamp)
    alpha = torch.where((alpha >= min_alpha) & (sigma >= 0), alpha, torch.zeros_like(alpha))
    lg = torch.log1p(-alpha).double()
    ex = _excl_cumsum(lg)
    log_t = ex - ex.index_select(0, seg_start)
    with torch.no_grad():
        keep = (log_t + lg) > log_t_eps  # gsplat: stop when T * (1 - alpha) <= eps
    w = alpha * torch.exp(log_t).to(alpha.dtype) * keep
    vals = torch.cat([w[:, None] * _gather(feats, gid), w[:, None]], dim=1)
    return torch.segment_reduce(vals, "sum", lengths=counts, axis=0)


def _rasterize_torch(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     viewmats: Tensor, Ks: Tensor, W: int, H: int, sh_degree: int | None, near: float,
                     far: float, s: RasterSettings) -> RenderOutput:
    """The pure-PyTorch reference; `rgb` not yet composited over the background."""
    B, N = viewmats.shape[0], means.shape[0]
    dev, dt = means.device, means.dtype
    proj = project(means, quats, scales, viewmats, Ks, W, H, s.eps2d, near, far, s.radius_sigmas,
                   s.radius_clip)
    means2d = proj.means2d
    if torch.is_grad_enabled() and means2d.requires_grad:
        means2d.retain_grad()
    opac = opacities
    feat = view_colors(colors, sh_degree, means, viewmats)  # (B, N, D)
    D = feat.shape[-1]
    feats = torch.cat([feat, proj.depths[..., None]], dim=-1).reshape(B * N, D + 1)
    m2d, con = means2d.reshape(B * N, 2), proj.conics.reshape(B * N, 3)
    opac_v = opac[None].expand(B, N).reshape(B * N)

    gid, pix = _pixel_pairs(proj, opac, W, H, s.min_alpha)
    img = torch.zeros(B * H * W, D + 2, device=dev, dtype=dt)
    if gid.numel() > 0:
        upix, seg, counts = torch.unique_consecutive(pix, return_inverse=True, return_counts=True)
        seg_first = _excl_cumsum(counts)  # first pair of each pixel
        # chunks = runs of whole pixels holding about chunk_pairs pairs
        bucket = seg_first // max(1, s.chunk_pairs)
        _, seg_per_chunk = torch.unique_consecutive(bucket, return_counts=True)
        seg_bounds = [0] + torch.cumsum(seg_per_chunk, 0).tolist()
        use_ckpt = len(seg_bounds) > 2 and torch.is_grad_enabled()
        log_t_eps = math.log(s.transmittance_eps)
        outs = []
        for i in range(len(seg_bounds) - 1):
            s0, s1 = seg_bounds[i], seg_bounds[i + 1]
            p0 = int(seg_first[s0])
            p1 = int(seg_first[s1]) if s1 < seg_first.numel() else gid.numel()
            lp = pix[p0:p1]
            pl = lp % (H * W)
            px = (pl % W).to(dt) + 0.5
            py = (pl // W).to(dt) + 0.5
            lseg = seg[p0:p1] - s0
            lstart = seg_first[s0:s1][lseg] - p0
            args = (m2d, con, opac_v, feats, gid[p0:p1], px, py, lseg, lstart, counts[s0:s1],
                    s.alpha_clamp, s.min_alpha, log_t_eps)
            if use_ckpt:
                outs.append(checkpoint(_composite, *args, use_reentrant=False))
            else:
                outs.append(_composite(*args))
        # upix is unique: a copy, not an accumulation (deterministic)
        img = img.index_copy(0, upix, torch.cat(outs, 0) if len(outs) > 1 else outs[0])
    img = img.reshape(B, H, W, D + 2)
    alpha = img[..., D + 1:D + 2]
    depth = img[..., D:D + 1] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=img[..., :D], alpha=alpha, depth=depth, means2d=means2d, radii=proj.radii)


# ----------------------------------------------------------------------------------------------
# gsplat backend
# ----------------------------------------------------------------------------------------------
def _rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                      viewmats: Tensor, Ks: Tensor, W: int, H: int, sh_degree: int | None, near: float,
                      far: float, s: RasterSettings) -> RenderOutput:
    """gsplat's CUDA rasteriser with the settings it exposes; `rgb` not yet over the background."""
    from gsplat import rasterization

    out, alphas, meta = rasterization(
        means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
        Ks=Ks, width=W, height=H, near_plane=near, far_plane=far, radius_clip=s.radius_clip,
        eps2d=s.eps2d, sh_degree=sh_degree, render_mode="RGB+ED", packed=False,
    )
    means2d = meta["means2d"]
    if torch.is_grad_enabled() and means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]
    if radii.dim() == 3:  # gsplat >= 1.5: (C, N, 2)
        radii = radii.max(dim=-1).values
    return RenderOutput(rgb=out[..., :-1], alpha=alphas, depth=out[..., -1:], means2d=means2d,
                        radii=radii.to(torch.int32))
