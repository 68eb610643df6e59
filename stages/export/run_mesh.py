"""The per-asset mesh of a run (`pipeline.mesh: glb`): the export's mesh formats written into the
asset's own folder right after its stages, before its record is committed (off by default).

Why a run option besides `sctd3d export --formats glb`: a run whose consumers want meshes (a game
engine, a mesh trainer) gets them as assets finish, on the workers that made them, without a second
pass over the run. The files are byte-for-byte what the export writes for the same options and
orbit (the same `stages.export.formats` encoders); the orbit is the run's evaluation orbit
(`render.elevation_deg`, `render.radius`, `render.fovy`). Not a generation setting: `pipeline.*`
is never hashed, so turning it on changes no asset id.
"""

from __future__ import annotations

import io
import logging
import os

from common.config import ConfigError, mesh_config
from common.storage import atomic_path

log = logging.getLogger(__name__)

MESH_RUN_FORMATS = ("glb", "obj")  # the mesh formats a run can write per asset


def parse(spec: str) -> tuple[str, ...]:
    """`pipeline.mesh` ("" = off, "glb", "obj", "glb,obj") -> format names; ConfigError otherwise."""
    names = tuple(dict.fromkeys(n.strip() for n in str(spec or "").split(",") if n.strip()))
    bad = [n for n in names if n not in MESH_RUN_FORMATS]
    if bad:
        raise ConfigError(f"pipeline.mesh: {bad[0]!r} is not a mesh format; use one or both of "
                          f"{', '.join(MESH_RUN_FORMATS)} (comma-separated), or '' for none")
    return names


def check(spec: str, options: dict) -> None:
    """ConfigError (one line) for a bad `pipeline.mesh` / `pipeline.mesh_options`."""
    if parse(spec):
        mesh_config(options, source="pipeline.mesh_options")


def write_asset_mesh(adir: str, ply_path: str, asset_id: str, prompt: str, spec: str,
                     options: dict, orbit: dict) -> list[str]:
    """Write the mesh formats' files (e.g. asset.glb) into `adir`; the written names (none, with a
    warning, when the Gaussians have no surface at the threshold: the asset itself is fine)."""
    from kernels.ply import load_ply
    from stages.export import formats
    from stages.export.mesh import EmptyMesh

    names = parse(spec)
    if not names:
        return []
    with open(ply_path, "rb") as f:
        ply = f.read()
    g = load_ply(io.BytesIO(ply))
    asset = formats.SplatAsset(asset_id=asset_id, ply=ply, gaussians=g, prompt=prompt or "",
                               options={"orbit": dict(orbit), "mesh": dict(options or {})})
    try:
        files = formats.encode(names, asset)
    except EmptyMesh as e:
        log.warning("asset %s: no mesh written: %s", asset_id, e)
        return []
    for name, data in files.items():
        with atomic_path(os.path.join(adir, name)) as tmp, open(tmp, "wb") as out:
            out.write(data)
    return sorted(files)
