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
