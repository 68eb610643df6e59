"""A textured triangle mesh of an asset's Gaussians (DreamGaussian's `extract_mesh`, as a batch step).

Steps (common.config.MeshConfig holds every constant):
1. the Gaussians' summed density on a `resolution`^3 grid (kernels.mesh.density_grid), in the cube
   that holds every visible Gaussian's 3-sigma box;
2. marching cubes at `threshold` (PyMCubes), in world units: the mesh lives in the splats' world
   (y-up, RUB, object at the origin, the units of the .ply and transforms.json);
3. decimation to the `faces` budget (fast-simplification, quadric error);
4. UV unwrap (xatlas) and a `texture`^2 texture baked by back-projecting the splat renders of an
   orbit (`bake_views` azimuths at the export elevation, +60 and -30 degrees) onto the surface
   points of each texel, visibility from the splats' depth (where alpha > 0.5); texels no view
   sees take the density-weighted Gaussian colour;
5. fidelity: the mesh rendered (kernels.mesh.rasterize) from `fidelity_views` views of the export
   orbit vs the splat renders: PSNR over white and mask IoU (splat alpha > 0.5 vs mesh coverage).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from common.config import MeshConfig
from kernels import mesh as km
from kernels.cameras import Cameras, orbit_cameras
from kernels.gaussians import Gaussians
from stages.render import render_batches

BAKE_ELEVATIONS = (None, 60.0, -30.0)  # None = the export orbit's elevation
WHITE = (1.0, 1.0, 1.0)


class EmptyMesh(ValueError):
    """No surface at the threshold (the asset is recorded as skipped with this line)."""


@dataclass
class Mesh:
    vertices: np.ndarray  # (V,3) float32 world
    faces: np.ndarray  # (F,3) int
    vertex_colors: np.ndarray  # (V,3) uint8
    uv: np.ndarray | None = None  # (V,2) trimesh/OpenGL convention (v up)
    texture: np.ndarray | None = None  # (T,T,3) uint8, row 0 = v 1
    stats: dict = field(default_factory=dict)


def _surface(g: Gaussians, cfg: MeshConfig) -> tuple[np.ndarray, np.ndarray, torch.Tensor, float]:
    import fast_simplification
    import mcubes

    bound = km.grid_bound(g)
    dens, col = km.density_grid(g, cfg.resolution, bound)
    d = dens.cpu().numpy().astype(np.float64)
    d = np.pad(d, 1)  # zero border: surfaces close at the grid's edge (watertight)
    v, f = mcubes.marching_cubes(d, float(cfg.threshold))
    if len(f) == 0:
        raise EmptyMesh(f"no surface at mesh threshold {cfg.threshold} (max density "
                        f"{float(dens.max()):.3g}); lower --mesh threshold=")
    step = 2.0 * bound / (cfg.resolution - 1)
    v = (v - 1.0) * step - bound
    f = f.astype(np.int64)
    if len(f) > cfg.faces:
        v, f = fast_simplification.simplify(v.astype(np.float32), f, 1.0 - cfg.faces / len(f))
    import trimesh

    tm = trimesh.Trimesh(v, f, process=True)
    if tm.volume < 0:
        tm.invert()
    return np.asarray(tm.vertices, np.float32), np.asarray(tm.faces, np.int64), col, bound


RENDER_BATCH = 8  # splat views per renderer call (bounds the renderer's memory: ~0.6 GB at 256 px)


@dataclass
class SplatViews:
    """The splat renders of the bake orbit, made once per asset and shared by the texture bake and
    the fidelity (whose export-orbit views are every k-th view of the bake's first ring)."""

    cams: Cameras
    rgb: torch.Tensor  # (V,H,W,3) un-premultiplied
    alpha: torch.Tensor  # (V,H,W)
    depth: torch.Tensor  # (V,H,W)
    ring: int  # views per elevation ring (ring 0 = the export orbit's elevation)


def _views(g: Gaussians, cams: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(un-premultiplied rgb (V,H,W,3), alpha (V,H,W), depth (V,H,W)) of the splats."""
    rgbs, alphas, depths = [], [], []
    for out in render_batches(g, cams, "auto", torch.zeros(3), batch=RENDER_BATCH,
                              device=torch.device("cpu")):
        a = out.alpha[..., 0].clamp(0, 1).float().cpu()
        rgbs.append((out.rgb.float().cpu() / a[..., None].clamp_min(1e-6)).clamp(0, 1))
        alphas.append(a)
        depths.append(out.depth[..., 0].float().cpu())
        del out
    return torch.cat(rgbs), torch.cat(alphas), torch.cat(depths)


def splat_views(g: Gaussians, cfg: MeshConfig, orbit: dict[str, Any]) -> SplatViews:
    """The bake orbit's splat renders (3 rings of `bake_views`, `bake_resolution` px)."""
    cams = bake_orbit(cfg.bake_views, cfg.bake_resolution, orbit["elevation_deg"],
                      orbit["radius"], orbit["fovy"])
    return SplatViews(cams, *_views(g.to("cpu"), cams), ring=cfg.bake_views)


def render_mesh(m: Mesh, cams: Cameras, background=WHITE) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(rgb (V,H,W,3) over `background`, coverage (V,H,W) bool, z-buffers) of the mesh: texture
    (nearest texel) when it has one, else interpolated vertex colours."""
    verts = torch.from_numpy(m.vertices).float()
    faces = torch.from_numpy(m.faces).long()
    vc = torch.from_numpy(m.vertex_colors).float() / 255.0
    tex = torch.from_numpy(m.texture).float() / 255.0 if m.texture is not None else None
    uv = torch.from_numpy(m.uv).float() if m.uv is not None else None
    bg = torch.tensor(background, dtype=torch.float32)
    rgbs, masks, zbufs = [], [], []
    for i in range(len(cams)):
        xy, z = km.project(verts, cams.viewmats[i].float(), cams.Ks[i].float())
        fid, bary, zb = km.rasterize(xy, z, faces, cams.width, cams.height)
        hit = fid >= 0
        img = bg.expand(cams.height, cams.width, 3).clone()
        fv = faces[fid[hit]]  # (P,3)
        b = bary[hit]
        if tex is not None:
            T = tex.shape[0]
            puv = (uv[fv] * b[..., None]).sum(1)
            tx = (puv[:, 0] * T).floor().long().clamp(0, T - 1)
            ty = ((1.0 - puv[:, 1]) * T).floor().long().clamp(0, T - 1)
            img[hit] = tex[ty, tx]
        else:
            img[hit] = (vc[fv] * b[..., None]).sum(1)
        rgbs.append(img)
        masks.append(hit)
        zbufs.append(zb)
    return torch.stack(rgbs), torch.stack(masks), zbufs


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    import trimesh

    return np.asarray(trimesh.Trimesh(verts, faces, process=False).vertex_normals, np.float32)


def bake_orbit(n: int, resolution: int, elevation_deg: float, radius: float, fovy: float) -> Cameras:
    cams = [orbit_cameras(n, e if e is not None else elevation_deg, radius, fovy, resolution,
                          resolution) for e in BAKE_ELEVATIONS]
    return Cameras(torch.cat([c.viewmats for c in cams]), torch.cat([c.Ks for c in cams]),
                   resolution, resolution, *(torch.cat([getattr(c, k) for c in cams])
                                             for k in ("azimuth_deg", "elevation_deg", "radius",
                                                       "fovy")))


def _bake(sv: SplatViews) -> list:
    """The bake views: splat colours, visibility from the splats' depth where alpha > 0.5."""
    zbuf = torch.where(sv.alpha > 0.5, sv.depth, torch.full_like(sv.depth, float("inf")))
    return [(sv.cams.viewmats[i].float(), sv.cams.Ks[i].float(), sv.rgb[i], zbuf[i])
            for i in range(len(sv.cams))]


def extract(g: Gaussians, cfg: MeshConfig, orbit: dict[str, Any],
            sv: SplatViews | None = None) -> Mesh:
    """The mesh of `g`; `orbit` = {elevation_deg, radius, fovy} of the export's evaluation orbit;
    `sv` = its splat_views when the caller already has them (else rendered here)."""
    g = g.to("cpu")
    verts, faces, col_grid, bound = _surface(g, cfg)
    normals = _vertex_normals(verts, faces)
    views = _bake(sv if sv is not None else splat_views(g, cfg, orbit))
    tol = 4.0 * (2.0 * bound / (cfg.resolution - 1)) + 0.02 * orbit["radius"]
    vt = torch.from_numpy(verts)
    base = km.sample_grid(col_grid, vt, bound).clamp(0, 1)
    vrgb, vw = km.back_project(vt, torch.from_numpy(normals), views, tol)
    vrgb = torch.where((vw > 0)[:, None], vrgb, base)
    m = Mesh(verts, faces, (vrgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
    seen = float((vw > 0).float().mean())
    m.stats["watertight"] = watertight(m)  # before the UV seams split vertices
    if cfg.texture:
        _texture(m, g, cfg, views, col_grid, bound, tol)
    m.stats.update({"vertices_seen": seen})
    return m


ATLAS_PIECE_FACES = 2_500  # faces per xatlas chart problem (100k faces in one: ~80 CPU s; in 2,500-face pieces: ~10 s)


def _pieces(centres: np.ndarray, ids: np.ndarray, size: int) -> list[np.ndarray]:
    """Face ids split at the median of the longest axis until each piece has <= size faces."""
    if len(ids) <= size:
        return [ids]
    c = centres[ids]
    ax = int(np.argmax(c.max(0) - c.min(0)))
    order = ids[np.argsort(c[:, ax], kind="stable")]
    half = len(order) // 2
    return _pieces(centres, order[:half], size) + _pieces(centres, order[half:], size)


def _atlas(verts: np.ndarray, faces: np.ndarray, texture: int) -> tuple:
    """xatlas UVs (vmap, faces, uv) of the mesh, charted per spatial piece of <= ATLAS_PIECE_FACES
    faces (one atlas packs all pieces' charts): a chart never crosses a piece's cut, which the
    UV seams already allow, and the charting time drops ~2x at 1e5 faces."""
    import xatlas

    atlas = xatlas.Atlas()
    pieces = _pieces(verts[faces].mean(1), np.arange(len(faces)), ATLAS_PIECE_FACES)
    used = []
    for ids in pieces:
        u, inv = np.unique(faces[ids], return_inverse=True)
        atlas.add_mesh(verts[u], inv.reshape(-1, 3).astype(np.uint32))
        used.append(u)
    pack = xatlas.PackOptions()
    pack.resolution = max(texture, 64)
    pack.blockAlign = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmaps, idxs, uvs, off = [], [], [], 0
    for i, u in enumerate(used):
        vmap, idx, uv = atlas[i]
        vmaps.append(u[vmap])
        idxs.append(idx.astype(np.int64) + off)
        uvs.append(uv)
        off += len(vmap)
    return np.concatenate(vmaps), np.concatenate(idxs), np.concatenate(uvs)


def _texture(m: Mesh, g: Gaussians, cfg: MeshConfig, views: list, col_grid: torch.Tensor,
             bound: float, tol: float) -> None:
    from scipy import ndimage

    vmap, idx, uv = _atlas(m.vertices, m.faces, int(cfg.texture))
    verts = m.vertices[vmap]
    normals = _vertex_normals(m.vertices, m.faces)[vmap]
    faces = idx.astype(np.int64)
    T = int(cfg.texture)
    uvt = torch.from_numpy(uv.astype(np.float32))
    xy = torch.stack([uvt[:, 0] * T, (1.0 - uvt[:, 1]) * T], -1)
    ft = torch.from_numpy(faces)
    fid, bary, _ = km.rasterize(xy, torch.ones(len(xy)), ft, T, T)
    hit = fid >= 0
    fv = ft[fid[hit]]
    b = bary[hit][..., None]
    pts = (torch.from_numpy(verts)[fv] * b).sum(1)
    nrm = torch.nn.functional.normalize((torch.from_numpy(normals)[fv] * b).sum(1), dim=-1)
    rgb, w = km.back_project(pts, nrm, views, tol)
    rgb = torch.where((w > 0)[:, None], rgb, km.sample_grid(col_grid, pts, bound).clamp(0, 1))
    tex = np.zeros((T, T, 3), np.float32)
    tex[hit.numpy()] = rgb.numpy()
    if hit.any():  # fill the gutters with the nearest texel (no dark seams under filtering)
        _, (iy, ix) = ndimage.distance_transform_edt(~hit.numpy(), return_indices=True)
        tex = tex[iy, ix]
    vcol = m.vertex_colors[vmap]
    m.vertices, m.faces, m.uv, m.vertex_colors = verts, faces, uv.astype(np.float32), vcol
    m.texture = (tex.clip(0, 1) * 255 + 0.5).astype(np.uint8)
    m.stats["texels_seen"] = float((w > 0).float().mean()) if len(w) else 0.0


def fidelity(g: Gaussians, m: Mesh, cfg: MeshConfig, orbit: dict[str, Any],
             sv: SplatViews | None = None) -> dict[str, float]:
    """PSNR (over white) and mask IoU of the mesh vs the splats on `fidelity_views` orbit views
    (taken from the bake renders `sv` when they hold them: every k-th view of ring 0)."""
    if not cfg.fidelity_views:
        return {}
    cams = orbit_cameras(cfg.fidelity_views, orbit["elevation_deg"], orbit["radius"],
                         orbit["fovy"], cfg.bake_resolution, cfg.bake_resolution)
    pick = (torch.arange(cfg.fidelity_views) * (sv.ring // cfg.fidelity_views)
            if sv is not None and sv.ring % cfg.fidelity_views == 0 else None)
    if pick is not None and torch.allclose(sv.cams.viewmats[pick], cams.viewmats, atol=1e-5):
        rgb, alpha = sv.rgb[pick], sv.alpha[pick]
    else:
        rgb, alpha, _ = _views(g.to("cpu"), cams)
    splat = rgb * alpha[..., None] + (1 - alpha[..., None])
    mrgb, mmask = render_mesh(m, cams)[:2]
    smask = alpha > 0.5
    inter = float((smask & mmask).sum())
    union = float((smask | mmask).sum())
    return {"psnr": km.psnr(mrgb, splat), "mask_iou": inter / union if union else 1.0}


def options_dict(cfg: MeshConfig) -> dict:
    return asdict(cfg)


def watertight(m: Mesh) -> bool:
    import trimesh

    return bool(trimesh.Trimesh(m.vertices, m.faces, process=True).is_watertight)
