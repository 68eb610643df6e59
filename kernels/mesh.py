"""Tensor work of the mesh export: the Gaussians' density on a grid, a triangle rasteriser, and the
back-projection of rendered views onto surface points.

Why here (pure torch, no mesh libraries): the grid and the rasteriser are the two loops over
millions of points of the mesh export; `stages/export/mesh.py` does marching cubes, decimation and
UV unwrapping with the maintained libraries and calls these for the rest. Both run on CPU (the
export workers) and on CUDA unchanged.

Density (DreamGaussian's `extract_fields`): d(x) = sum_i opacity_i exp(-0.5 (x-mu_i)^T S_i^-1 (x-mu_i)),
each Gaussian evaluated only inside its `sigmas`-sigma box of voxels; the colour field is the
density-weighted mean of the Gaussians' DC colours (the cheap vertex-colour option and the fallback
for texels no view sees).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.gaussians import Gaussians, quat_to_rotmat

CHUNK = 1 << 22  # candidate points per step (bounds memory: ~ CHUNK * 64 B)


def grid_bound(g: Gaussians, sigmas: float = 3.0, min_opacity: float = 0.05) -> float:
    """Half-width of the cube (centred on the origin) that holds every visible Gaussian's box."""
    keep = g.opacities.detach() > min_opacity
    if not bool(keep.any()):
        keep = torch.ones_like(keep)
    ext = g.means.detach()[keep].abs() + sigmas * g.scales.detach()[keep].max(-1, keepdim=True).values
    return float(ext.max()) * 1.02 + 1e-6


@torch.no_grad()
def density_grid(g: Gaussians, resolution: int, bound: float, sigmas: float = 3.0,
                 max_radius: int = 0) -> tuple[Tensor, Tensor]:
    """(density (R,R,R), rgb (R,R,R,3)) on the grid points -bound + i * 2 bound / (R-1), axes
    (x, y, z). `max_radius` caps a Gaussian's box in voxels (0 = resolution // 4)."""
    R = int(resolution)
    dev = g.means.device
    step = 2.0 * bound / (R - 1)
    mu = g.means.detach().float()
    s = g.scales.detach().float().clamp_min(1e-8)
    rot = quat_to_rotmat(g.quats.detach().float())
    cov_inv = rot @ torch.diag_embed(1.0 / s ** 2) @ rot.transpose(-1, -2)  # (N,3,3)
    opa = g.opacities.detach().float()
    rgb = g.colors.detach().float().clamp(0, 1)
    cap = max_radius or max(1, R // 4)
    rad = torch.ceil(sigmas * s.max(-1).values / step).long().clamp(1, cap)
    centre = torch.round((mu + bound) / step).long()
    dens = torch.zeros(R ** 3, device=dev)
    col = torch.zeros(R ** 3, 3, device=dev)
    for r in torch.unique(rad).tolist():
        idx = torch.nonzero(rad == r).squeeze(1)
        ar = torch.arange(-r, r + 1, device=dev)
        off = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)  # (K,3)
        per = max(1, CHUNK // off.shape[0])
        for c in range(0, len(idx), per):
            j = idx[c:c + per]
            vox = centre[j, None, :] + off[None]  # (n,K,3)
            ok = ((vox >= 0) & (vox < R)).all(-1)
            d = vox.float() * step - bound - mu[j, None, :]
            m = torch.einsum("nki,nij,nkj->nk", d, cov_inv[j], d)
            w = opa[j, None] * torch.exp(-0.5 * m) * ok
            flat = ((vox[..., 0].clamp(0, R - 1) * R + vox[..., 1].clamp(0, R - 1)) * R
                    + vox[..., 2].clamp(0, R - 1)).reshape(-1)
            dens.index_add_(0, flat, w.reshape(-1))
            col.index_add_(0, flat, (w[..., None] * rgb[j, None, :]).reshape(-1, 3))
    col = col / dens[:, None].clamp_min(1e-8)
    return dens.reshape(R, R, R), col.reshape(R, R, R, 3)


def sample_grid(grid: Tensor, points: Tensor, bound: float) -> Tensor:
    """Trilinear samples (M, C) of a (R,R,R,C) grid (axes x,y,z) at world points (M,3)."""
    g = grid.permute(3, 2, 1, 0)[None]  # (1,C,Z,Y,X): grid_sample's (x,y,z) = (W,H,D)
    p = (points / bound).clamp(-1, 1)[None, :, None, None, :]
    out = torch.nn.functional.grid_sample(g.float(), p.float(), mode="bilinear", align_corners=True)
    return out[0, :, :, 0, 0].T


def rasterize(xy: Tensor, z: Tensor, faces: Tensor, width: int, height: int,
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Z-buffered triangle rasterisation at pixel centres.

    xy (V,2) pixel coordinates, z (V,) positive depths, faces (F,3) long. Returns face id (H,W)
    (-1 = empty), perspective-correct barycentrics (H,W,3) and depth (H,W) (inf = empty). Faces
    with a vertex at z <= 0 are dropped.
    """
    dev = xy.device
    H, W = int(height), int(width)
    tri = xy[faces].float()  # (F,3,2)
    tz = z[faces].float()
    keep = (tz > 1e-6).all(-1)
    lo = torch.floor(tri.min(1).values - 0.5).long()
    hi = torch.ceil(tri.max(1).values - 0.5).long()
    lo = torch.maximum(lo, torch.zeros_like(lo))
    hi = torch.minimum(hi, torch.tensor([W - 1, H - 1], device=dev))
    size = (hi - lo + 1).clamp_min(0)
    keep &= (size > 0).all(-1)
    side = size.max(-1).values
    # bucket faces by the power of two that covers their box
    bucket = torch.where(keep, torch.ceil(torch.log2(side.clamp_min(1).float())).long(),
                         torch.full_like(side, -1))
    pix_all, face_all, bary_all, dep_all = [], [], [], []
    for b in torch.unique(bucket).tolist():
        if b < 0:
            continue
        S = 1 << b
        ids = torch.nonzero(bucket == b).squeeze(1)
        ar = torch.arange(S, device=dev)
        off = torch.stack(torch.meshgrid(ar, ar, indexing="xy"), -1).reshape(-1, 2)  # (K,2) x,y
        per = max(1, CHUNK // off.shape[0])
        for c in range(0, len(ids), per):
            f = ids[c:c + per]
            p = lo[f, None, :] + off[None]  # (n,K,2)
            inside_box = (p <= hi[f, None, :]).all(-1)
            q = p.float() + 0.5
            a, bb, cc = tri[f, 0, None], tri[f, 1, None], tri[f, 2, None]
            area = ((bb[..., 0] - a[..., 0]) * (cc[..., 1] - a[..., 1])
                    - (bb[..., 1] - a[..., 1]) * (cc[..., 0] - a[..., 0]))  # (n,1)
            w0 = ((bb[..., 0] - q[..., 0]) * (cc[..., 1] - q[..., 1])
                  - (bb[..., 1] - q[..., 1]) * (cc[..., 0] - q[..., 0]))
            w1 = ((cc[..., 0] - q[..., 0]) * (a[..., 1] - q[..., 1])
                  - (cc[..., 1] - q[..., 1]) * (a[..., 0] - q[..., 0]))
            safe = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
            l0, l1 = w0 / safe, w1 / safe
            l2 = 1.0 - l0 - l1
            lam = torch.stack([l0, l1, l2], -1)
            ok = inside_box & (area.abs() > 1e-12) & (lam >= -1e-6).all(-1)
            if not bool(ok.any()):
                continue
            inv = lam / tz[f, None, :]
            inv_z = inv.sum(-1)
            n_i, k_i = torch.nonzero(ok, as_tuple=True)
            pix_all.append(p[n_i, k_i, 1] * W + p[n_i, k_i, 0])
            face_all.append(f[n_i])
            bary_all.append((inv / inv_z[..., None])[n_i, k_i])
            dep_all.append(1.0 / inv_z[n_i, k_i])
    face_id = torch.full((H * W,), -1, dtype=torch.long, device=dev)
    bary = torch.zeros(H * W, 3, device=dev)
    zbuf = torch.full((H * W,), float("inf"), device=dev)
    if pix_all:
        pix, fc = torch.cat(pix_all), torch.cat(face_all)
        br, dp = torch.cat(bary_all), torch.cat(dep_all)
        zbuf.scatter_reduce_(0, pix, dp, reduce="amin")
        win = dp <= zbuf[pix]
        face_id[pix[win]] = fc[win]
        bary[pix[win]] = br[win]
    return face_id.reshape(H, W), bary.reshape(H, W, 3), zbuf.reshape(H, W)


def project(points: Tensor, viewmat: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """(pixel xy (M,2), camera z (M,)) of world points under one OpenCV camera."""
    pc = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2]
    zs = torch.where(z.abs() > 1e-9, z, torch.full_like(z, 1e-9))
    xy = torch.stack([K[0, 0] * pc[:, 0] / zs + K[0, 2], K[1, 1] * pc[:, 1] / zs + K[1, 2]], -1)
    return xy, z


def back_project(points: Tensor, normals: Tensor, views: list[tuple[Tensor, Tensor, Tensor, Tensor]],
                 tol: float, min_cos: float = 0.1) -> tuple[Tensor, Tensor]:
    """Colours of surface points from rendered views: (rgb (M,3), weight (M,)).

    views: [(viewmat (4,4), K (3,3), rgb (H,W,3) un-premultiplied, zbuf (H,W) camera-z depth of
    the nearest surface, inf where none)];
    a point takes a view's pixel when it is in the image, not hidden (camera z <= zbuf + tol) and
    faces the camera (cos >= min_cos); views are averaged with weight cos^2.
    """
    acc = torch.zeros(points.shape[0], 3, device=points.device)
    wsum = torch.zeros(points.shape[0], device=points.device)
    for vm, K, rgb, zbuf in views:
        H, W = zbuf.shape
        xy, z = project(points, vm, K)
        px = torch.floor(xy).long()
        inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H) & (z > 0)
        pxc = px.clone()
        pxc[:, 0].clamp_(0, W - 1)
        pxc[:, 1].clamp_(0, H - 1)
        zb = zbuf[pxc[:, 1], pxc[:, 0]]
        cam = -(vm[:3, :3].T @ vm[:3, 3])  # camera centre
        d = torch.nn.functional.normalize(cam[None] - points, dim=-1)
        cos = (d * normals).sum(-1)
        ok = inside & (z <= zb + tol) & (cos >= min_cos)
        w = torch.where(ok, cos.clamp_min(0) ** 2, torch.zeros_like(cos))
        acc += w[:, None] * rgb[pxc[:, 1], pxc[:, 0]]
        wsum += w
    return acc / wsum[:, None].clamp_min(1e-8), wsum


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))
