"""`asset.sog`: PlayCanvas' SOG (a zip of WebP-quantised attributes, ~15-20x smaller than the .ply),
written by splat-transform for PlayCanvas / SuperSplat.

Axes: the RDF convention splat-transform and PlayCanvas' viewer assume for 3DGS data (the y-up
.ply is rotated 180 degrees about x first), so the asset is upright in SuperSplat.
SOG's SH compression runs k-means; `-g cpu` keeps it on the CPU (no WebGPU adapter needed).
"""

from __future__ import annotations

from stages.export import splat_transform
from stages.export.formats.base import ExportFormat, SplatAsset, register

FILE = "asset.sog"


def encode(asset: SplatAsset) -> dict[str, bytes]:
    return {FILE: splat_transform.from_y_up_ply(asset.ply, "sog", ["-g", "cpu"], "sog")}


def check() -> None:
    splat_transform.require_splat_transform("sog")


FORMAT = register(ExportFormat(
    name="sog", files={FILE: "sog"}, encode=encode, check=check,
    axes="RDF (x right, y down, z forward) as PlayCanvas/SuperSplat assume for 3DGS data = "
         "sctd3d world rotated 180 degrees about x",
    card_line="`asset.sog` (PlayCanvas SOG, for PlayCanvas / SuperSplat)"))
