"""One exported asset: splat files, renders and transforms.json, built in memory from the .ply.

Why bytes in, bytes out: this is the unit the executors fan out (one call per asset, on CPU or
GPU workers); it never touches storage, so the orchestrator (pipeline/export.py) alone decides
where files go and makes an asset folder visible only when it is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kernels.ply import PlyFormatError, load_ply
from stages.export import formats, views
from stages.export.index import preview_png

TRANSFORMS_FILE = "transforms.json"
PREVIEW_FILE = "preview.png"  # view 0, at most index.PREVIEW_PX: the index's image column
# the asset folder's layout (2: mm depth, loader-specific keys and split files, registry formats);
# part of an asset's reuse key, so an export of an older layout is re-exported, not reused
LAYOUT_VERSION = 2
BLENDER_FILES = {"train": "transforms_train.json", "test": "transforms_test.json"}
IMAGES_DIR = "images"
DEPTH_DIR = "depth"
MESH_FORMATS = {"glb", "obj"}  # the formats that read ExportSpec.mesh (stages/export/mesh.py)


class AssetSkip(ValueError):
    """An asset that cannot be exported (missing or unreadable .ply); recorded, not retried."""


@dataclass(frozen=True)
class ExportSpec:
    """What to write per asset; equal specs (plus the same .ply) give the same files."""

    views: int = 120
    resolution: int = 512
    formats: tuple = ("ply", "spz")  # names in stages.export.formats' registry
    random_views: int = 0
    seed: int = 0
    elevation_deg: float = 15.0
    radius: float = 3.5
    fovy: float = 0.6
    sampler: dict = field(default_factory=dict)  # generate.cameras of the run
    iteration: int = 0  # training iteration whose camera ranges the random views use
    backend: str = "auto"
    mesh: dict = field(default_factory=dict)  # common.config.MeshConfig keys (glb / obj formats)

    def key(self, ply_sha256: str) -> dict[str, Any]:
        """The parameters an existing asset folder must match to be reused."""
        d = asdict(self)
        d["formats"] = list(self.formats)
        if not self.random_views:
            d.pop("seed"), d.pop("sampler"), d.pop("iteration")
        d.pop("backend")  # both backends render the same picture
        if not set(self.formats) & MESH_FORMATS:
            d.pop("mesh")  # read by the mesh formats only (older exports keep their key)
        else:  # the resolved options: a changed MeshConfig default re-exports the mesh
            from common.config import mesh_config

            d["mesh"] = asdict(mesh_config(self.mesh))
        d["ply_sha256"] = ply_sha256
        d["layout"] = LAYOUT_VERSION
        return d


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame_names(spec: ExportSpec) -> tuple[list[str], list[str]]:
    """(frame stems, view sets): orbit frames 000..; random frames r000.."""
    stems = [f"{i:03d}" for i in range(spec.views)] + [f"r{i:03d}" for i in range(spec.random_views)]
    return stems, ["orbit"] * spec.views + ["random"] * spec.random_views


def build_asset(asset_id: str, ply: bytes, spec: ExportSpec,
                prompt: str = "") -> tuple[dict[str, bytes], dict]:
    """({relative path: bytes}, meta) of one asset; raises AssetSkip for an unreadable .ply."""
    try:
        g = load_ply(io.BytesIO(ply))
    except PlyFormatError as e:
        raise AssetSkip(f"unreadable asset.ply: {str(e).replace('<stream>: ', '')}") from None
    cams = views.orbit(spec.views, spec.resolution, spec.elevation_deg, spec.radius, spec.fovy)
    if spec.random_views:
        import torch

        from kernels.cameras import Cameras

        rnd = views.random_views(spec.random_views, spec.resolution, spec.sampler, spec.iteration,
                                 spec.seed, asset_id)
        cams = Cameras(*(torch.cat([getattr(cams, n), getattr(rnd, n)]) for n in
                         ("viewmats", "Ks")), cams.width, cams.height,
                       *(torch.cat([getattr(cams, n), getattr(rnd, n)]) for n in
                         ("azimuth_deg", "elevation_deg", "radius", "fovy")))
    rgba, depth = views.render_rgba_depth(g, cams, backend=spec.backend)
    stems, view_sets = frame_names(spec)
    images = [f"{IMAGES_DIR}/{s}.png" for s in stems]
    depths = [f"{DEPTH_DIR}/{s}.png" for s in stems]
    files: dict[str, bytes] = {}
    too_far = 0
    for i in range(len(stems)):
        files[images[i]] = views.rgba_png(rgba[i])
        files[depths[i]], n_far = views.depth_png(depth[i])
        too_far += n_far
    files[PREVIEW_FILE] = preview_png(files[images[0]])
    tf = views.transforms(cams, view_sets, images, depths)
    tf["asset_id"] = asset_id
    files[TRANSFORMS_FILE] = json.dumps(tf, indent=1).encode()
    for split in ("train", "test"):
        files[BLENDER_FILES[split]] = json.dumps(views.blender_transforms(tf, split),
                                                 indent=1).encode()
    c2w0 = views.c2w_opengl(cams.viewmats[:1])[0]
    asset = formats.SplatAsset(asset_id=asset_id, ply=ply, gaussians=g, camera={
        "c2w": c2w0.tolist(), "fovy": float(cams.fovy[0]), "w": int(cams.width),
        "h": int(cams.height)}, prompt=prompt or "", options={
        "orbit": {"elevation_deg": spec.elevation_deg, "radius": spec.radius, "fovy": spec.fovy},
        "mesh": dict(spec.mesh)})
    stats: dict = {}
    from stages.export.mesh import EmptyMesh

    try:
        splat_files = formats.encode(tuple(spec.formats), asset, stats)
    except EmptyMesh as e:
        raise AssetSkip(str(e)) from None
    files.update(splat_files)
    meta = {"num_gaussians": g.num(), "sh_degree": g.sh_degree, "num_views": spec.views,
            "num_random_views": spec.random_views, "depth_scale": views.DEPTH_UNIT,
            "depth_pixels_too_far": too_far,
            "ply_sha256": sha256(ply), "bytes": {k: len(v) for k, v in splat_files.items()},
            "file_bytes": sum(len(v) for v in files.values()), "format_stats": stats}
    return files, meta
