"""`asset.glb`: a textured triangle mesh of the asset as binary glTF 2.0 (stages/export/mesh.py:
density grid, marching cubes, decimation, xatlas UVs, texture baked from the splat renders).

Axes and units: glTF's own convention (+y up, +z front, right-handed, metres) is sctd3d's world,
so the positions are the splats' world coordinates unchanged (same units as the .ply and
transforms.json; no node transform). The asset id, prompt and how the mesh was made are in the
glTF `extras` (asset.extras and the scene's extras). Index columns: mesh_faces, mesh_vertices,
mesh_watertight, mesh_texture_px, glb_bytes, mesh_psnr, mesh_mask_iou (mesh vs splat renders).
"""

from __future__ import annotations

import numpy as np

from stages.export.formats.base import WORLD_AXES, ExportFormat, FormatUnavailable, SplatAsset, register

FILE = "asset.glb"
STATS = {"mesh_faces": "int64", "mesh_vertices": "int64", "mesh_watertight": "bool",
         "mesh_texture_px": "int64", "glb_bytes": "int64", "mesh_psnr": "float64",
         "mesh_mask_iou": "float64"}
ORBIT_DEFAULT = {"elevation_deg": 15.0, "radius": 3.5, "fovy": 0.6}


def asset_mesh(asset: SplatAsset):
    """(Mesh, MeshConfig, fidelity) of an asset, computed once for all mesh formats."""
    if "mesh" not in asset.cache:
        from common.config import mesh_config
        from stages.export import mesh as mesh_stage

        cfg = mesh_config(asset.options.get("mesh") or {})
        orbit = {**ORBIT_DEFAULT, **(asset.options.get("orbit") or {})}
        sv = mesh_stage.splat_views(asset.gaussians, cfg, orbit)  # rendered once: bake + fidelity
        m = mesh_stage.extract(asset.gaussians, cfg, orbit, sv)
        asset.cache["mesh"] = (m, cfg, mesh_stage.fidelity(asset.gaussians, m, cfg, orbit, sv))
    return asset.cache["mesh"]


def extras(asset: SplatAsset, cfg, fid: dict) -> dict:
    from dataclasses import asdict

    return {"asset_id": asset.asset_id, "prompt": asset.prompt,
            "generator": "sctd3d mesh export (density grid + marching cubes + decimation + "
                         "xatlas + texture baked from the splat renders)",
            "axes": f"sctd3d world = glTF axes: {WORLD_AXES}; units of the .ply",
            "mesh_options": asdict(cfg), "fidelity_vs_splats": fid}


def trimesh_of(m, name: str = "asset"):
    import trimesh
    from PIL import Image

    if m.texture is not None:
        mat = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(m.texture), metallicFactor=0.0, roughnessFactor=1.0,
            doubleSided=False, name=name)
        vis = trimesh.visual.TextureVisuals(uv=m.uv, material=mat)
    else:
        vis = trimesh.visual.ColorVisuals(vertex_colors=np.concatenate(
            [m.vertex_colors, np.full((len(m.vertex_colors), 1), 255, np.uint8)], 1))
    return trimesh.Trimesh(m.vertices, m.faces, visual=vis, process=False)


def mesh_stats(asset: SplatAsset) -> dict:
    """The index's mesh columns (shared by the mesh formats)."""
    m, cfg, fid = asset_mesh(asset)
    return {"mesh_faces": int(len(m.faces)), "mesh_vertices": int(len(m.vertices)),
            "mesh_watertight": bool(m.stats.get("watertight")),
            "mesh_texture_px": int(cfg.texture), "mesh_psnr": fid.get("psnr"),
            "mesh_mask_iou": fid.get("mask_iou")}


def glb_bytes(asset: SplatAsset) -> tuple[bytes, dict]:
    import trimesh

    m, cfg, fid = asset_mesh(asset)
    ex = extras(asset, cfg, fid)
    scene = trimesh.Scene()
    scene.add_geometry(trimesh_of(m), node_name="asset", geom_name="asset")

    def post(tree: dict) -> None:
        tree.setdefault("asset", {})["extras"] = ex
        for s in tree.get("scenes", []):
            s["extras"] = ex

    data = trimesh.exchange.gltf.export_glb(scene, include_normals=True, tree_postprocessor=post)
    return data, {**mesh_stats(asset), "glb_bytes": len(data)}


def encode(asset: SplatAsset) -> tuple[dict[str, bytes], dict]:
    data, stats = glb_bytes(asset)
    return {FILE: data}, stats


def check() -> None:
    missing = []
    for mod, pkg in (("trimesh", "trimesh"), ("mcubes", "PyMCubes"), ("xatlas", "xatlas"),
                     ("fast_simplification", "fast-simplification")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise FormatUnavailable(f"the glb/obj mesh formats need {', '.join(missing)}: "
                                f"pip install {' '.join(missing)} (or drop glb/obj from --formats)")


FORMAT = register(ExportFormat(
    name="glb", files={FILE: "glb"}, encode=encode, check=check, stat_columns=STATS,
    axes=f"glTF 2.0 axes (+y up, +z front, right-handed) = sctd3d world ({WORLD_AXES}); "
         "positions unchanged, units of the .ply",
    index_columns={"glb_path": FILE},
    card_line="`asset.glb` (textured triangle mesh, binary glTF 2.0: density grid + marching "
              "cubes + decimation + xatlas UVs + texture baked from the splat renders; same world "
              "axes and units as the splats and transforms.json; asset id and prompt in the glTF "
              "extras; Blender, three.js, game engines)"))
