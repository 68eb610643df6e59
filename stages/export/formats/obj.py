"""`asset.obj` + `asset.mtl` + `asset.png`: the same mesh as `asset.glb` (stages/export/mesh.py,
computed once per asset) as Wavefront OBJ for tools without glTF: positions in sctd3d's world
(y-up, +z front, right-handed; the OBJ convention of Blender's and most importers' "Y up"), units
of the .ply; texture coordinates with V up (the OBJ convention), the texture in `asset.png` named
by `map_Kd` in `asset.mtl`. With `--mesh texture=0` the OBJ carries vertex colours (`v x y z r g
b`) and the .mtl / .png are a plain white material. The asset id is in the OBJ's header comment.
"""

from __future__ import annotations

import io

from stages.export.formats.base import WORLD_AXES, ExportFormat, SplatAsset, register
from stages.export.formats.glb import asset_mesh, check, mesh_stats, trimesh_of

OBJ, MTL, PNG = "asset.obj", "asset.mtl", "asset.png"
STATS = {"mesh_faces": "int64", "mesh_vertices": "int64", "mesh_watertight": "bool",
         "mesh_texture_px": "int64", "obj_bytes": "int64", "mesh_psnr": "float64",
         "mesh_mask_iou": "float64"}


def _white_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def encode(asset: SplatAsset) -> tuple[dict[str, bytes], dict]:
    from trimesh.exchange.obj import export_obj

    m, _, _ = asset_mesh(asset)
    text, extra = export_obj(trimesh_of(m, "asset"), include_texture=True, return_texture=True,
                             mtl_name=MTL, include_normals=True)
    header = (f"# sctd3d asset {asset.asset_id}: mesh of the Gaussians (README 'Meshes')\n"
              f"# axes: {WORLD_AXES}; units of the .ply\n")
    if PNG not in extra:  # vertex colours: a plain white material keeps the declared files
        extra = {MTL: f"newmtl asset\nKd 1 1 1\nmap_Kd {PNG}\n".encode(), PNG: _white_png()}
    files = {OBJ: (header + text).encode(), MTL: extra[MTL], PNG: extra[PNG]}
    return files, {**mesh_stats(asset), "obj_bytes": sum(len(v) for v in files.values())}


FORMAT = register(ExportFormat(
    name="obj", files={OBJ: "obj", MTL: "mtl", PNG: "obj.png"}, encode=encode, check=check,
    stat_columns=STATS, index_columns={"obj_path": OBJ},
    axes=f"sctd3d world ({WORLD_AXES}), OBJ 'Y up'; positions unchanged, units of the .ply",
    card_line="`asset.obj` + `asset.mtl` + `asset.png` (the glb's mesh as Wavefront OBJ with its "
              "texture; same world axes and units as the splats)"))
