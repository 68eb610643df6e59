"""`asset.spz`: Niantic's SPZ (version 3, gzip), ~10x smaller than the .ply, for web viewers.

Axes: SPZ's own convention, RUB (the SPZ specification: "SPZ stores data internally in an RUB
coordinate system following the OpenGL and three.js convention"), which is sctd3d's world: the
stored positions are the .ply's, unchanged. Encoded by splat-transform (Niantic's WebAssembly
codec) after turning the y-up .ply into the RDF .ply the tool assumes (stages/export/splat_transform).
Version 3: Spark and Niantic's reader read it; GaussianSplats3D 0.4.7 reads SPZ 1-2
only, so it gets the `splat` format.
"""

from __future__ import annotations

from stages.export import splat_transform
from stages.export.formats.base import WORLD_AXES, ExportFormat, SplatAsset, register

FILE = "asset.spz"
SPZ_VERSION = 3


def encode(asset: SplatAsset) -> dict[str, bytes]:
    return {FILE: splat_transform.from_y_up_ply(asset.ply, "spz",
                                                ["--spz-version", str(SPZ_VERSION)], "spz")}


def check() -> None:
    splat_transform.require_splat_transform("spz")


FORMAT = register(ExportFormat(
    name="spz", files={FILE: "spz"}, encode=encode, check=check, default=True,
    axes=f"SPZ's own RUB convention = sctd3d world ({WORLD_AXES}); positions unchanged",
    card_line=f"`asset.spz` (SPZ v{SPZ_VERSION}, RUB axes as the SPZ spec defines: Spark, "
              "Niantic's reader; not GaussianSplats3D 0.4, use `asset.splat`)"))
