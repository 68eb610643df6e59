"""Export fans re-rendering out through the Ray executor (one local Ray for this module)."""

from __future__ import annotations

import json
import os
import socket

from export_fixtures import asset_id, make_run
from pipeline.export import export_dataset


def test_ray_export_two_assets_matches_local(tmp_path, ray_local):
    run = make_run(tmp_path / "run", n_done=2, failed=False, truncated=True)
    s = export_dataset(str(run), str(tmp_path / "ray"), views=3, resolution=16, formats="ply",
                       shard_size=1, executor="ray", num_workers=2)
    assert (s.exported, s.skipped, s.shards) == (2, 1, 2)
    local = export_dataset(str(run), str(tmp_path / "local"), views=3, resolution=16,
                           formats="ply", shard_size=1)
    assert local.exported == 2
    for i in range(2):
        rel = f"assets/{asset_id(i)[:2]}/{asset_id(i)}"
        for f in ("images/000.png", "images/002.png", "depth/001.png", "transforms.json"):
            assert (tmp_path / "ray" / rel / f).read_bytes() == (tmp_path / "local" / rel / f).read_bytes()
        marker = json.loads((tmp_path / "ray" / rel / "export.json").read_text())
        assert marker["meta"]["num_views"] == 3
        # rendered in a Ray worker process, not in the driver
        assert marker["meta"]["worker"] != f"{socket.gethostname()}:{os.getpid()}"
        here = json.loads((tmp_path / "local" / rel / "export.json").read_text())
        assert here["meta"]["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert (tmp_path / "ray" / "shards" / "shard-00001.tar").is_file()
    skipped = json.loads((tmp_path / "ray" / "skipped.json").read_text())
    assert [r["asset_id"] for r in skipped] == [asset_id(101)]


def test_ray_export_writes_the_glb_in_a_worker(tmp_path, ray_local):
    """`--formats glb` through the export executor on Ray: the mesh is made in a Ray worker and
    reads back (trimesh; the asset id in the glTF extras) with the index's mesh columns."""
    import pyarrow.parquet as pq
    import pygltflib
    import trimesh

    from test_export_mesh import MESH, solid_marker_scene

    run = make_run(tmp_path / "run", n_done=1, failed=False, scenes={0: solid_marker_scene()})
    s = export_dataset(str(run), str(tmp_path / "ray"), views=2, resolution=16, formats="glb",
                       mesh=MESH, executor="ray", num_workers=1)
    assert (s.exported, s.skipped) == (1, 0)
    row = pq.read_table(tmp_path / "ray" / "index.parquet").drop(["preview"]).to_pylist()[0]
    glb = tmp_path / "ray" / row["glb_path"]
    assert len(trimesh.load(glb, force="mesh").faces) == row["mesh_faces"] > 100
    assert pygltflib.GLTF2().load(str(glb)).asset.extras["asset_id"] == asset_id(0)
    assert row["mesh_mask_iou"] >= 0.8
    marker = json.loads((glb.parent / "export.json").read_text())
    assert marker["meta"]["worker"] != f"{socket.gethostname()}:{os.getpid()}"
