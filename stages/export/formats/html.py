"""`viewer.html`: a self-contained offline viewer per asset (SuperSplat's viewer with the splat
inside, ~3 MB), written by splat-transform; open it in a browser, no server or network needed.

Axes: as `sog` (the viewer assumes RDF 3DGS data; the y-up .ply is rotated 180 degrees about x).
"""

from __future__ import annotations

from stages.export import splat_transform
from stages.export.formats.base import ExportFormat, SplatAsset, register

FILE = "viewer.html"


def encode(asset: SplatAsset) -> dict[str, bytes]:
    return {FILE: splat_transform.from_y_up_ply(asset.ply, "html", ["-g", "cpu"], "html")}


def check() -> None:
    splat_transform.require_splat_transform("html")


FORMAT = register(ExportFormat(
    name="html", files={FILE: "viewer.html"}, encode=encode, check=check,
    index_columns={"viewer_path": FILE},
    axes="as sog (RDF inside SuperSplat's viewer)",
    card_line="`viewer.html` (self-contained offline viewer: open it in a browser)"))
