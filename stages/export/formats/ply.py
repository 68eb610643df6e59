"""`asset.ply`: the run's INRIA 3DGS .ply, byte for byte.

Axes: sctd3d's world, y-up (RUB). Why not the 3DGS/COLMAP y-down convention: the file is the run's
own (its sha256 in the index ties the dataset to the run) and it shares the world of
transforms.json, so a trainer that starts from the .ply and the views (splatfacto, gsplat) gets
matching geometry. three.js-based viewers (Spark, GaussianSplats3D) show it upright with their
defaults; viewers that assume a y-down .ply (SuperSplat's editor) show it upside down: use the
`sog` / `html` formats for them, or rotate 180 degrees about x (README compatibility table).
"""

from __future__ import annotations

from stages.export.formats.base import WORLD_AXES, ExportFormat, SplatAsset, register

FILE = "asset.ply"


def encode(asset: SplatAsset) -> dict[str, bytes]:
    return {FILE: asset.ply}


FORMAT = register(ExportFormat(
    name="ply", files={FILE: "ply"}, encode=encode, default=True,
    axes=f"sctd3d world: {WORLD_AXES} (as generated; 3DGS/COLMAP .ply tools assume y-down)",
    card_line="`asset.ply` (INRIA 3DGS .ply as generated, y-up: upright in Spark and "
              "GaussianSplats3D; SuperSplat assumes y-down)"))
