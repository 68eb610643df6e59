"""The export format registry's seam: a format registered from a file under tests/ (named in
$SCTD3D_PLUGINS, as a user would) runs through `sctd3d export` on the CLI with no production file
edited: its files land in the asset folder, the index gets its column, the shards its member, the
card its line. A plugin that fails to import is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from export_fixtures import asset_id, blob_scene, make_run
from pipeline.cli import main

PLUGINS = Path(__file__).resolve().parent / "plugins"


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_a_format_from_a_plugin_file_runs_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCTD3D_PLUGINS", str(PLUGINS / "xyz_format.py"))
    run = make_run(tmp_path / "run", n_done=2, failed=False)
    out = tmp_path / "ds"
    code, stdout, err = _cli(["export", str(run), "--out", str(out), "--views", "1",
                              "--resolution", "16", "--formats", "ply,xyz"], capsys)
    assert code == 0, err
    for i in range(2):
        aid = asset_id(i)
        pts = np.loadtxt(out / "assets" / aid[:2] / aid / "points.xyz")
        assert np.allclose(pts, blob_scene(i).means.numpy(), atol=1e-5)
        assert "points.xyz" in json.loads(
            (out / "assets" / aid[:2] / aid / "export.json").read_text())["meta"]["files"]
    df = pd.read_parquet(out / "index.parquet")
    assert list(df["xyz_path"]) == [f"assets/{a[:2]}/{a}/points.xyz"
                                    for a in sorted(asset_id(i) for i in range(2))]
    with tarfile.open(next((out / "shards").glob("*.tar"))) as t:
        names = t.getnames()
    assert all(f"{asset_id(i)}.xyz" in names for i in range(2))
    assert "`points.xyz` (Gaussian means" in (out / "README.md").read_text()


def test_a_broken_plugin_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCTD3D_PLUGINS", str(PLUGINS / "broken_plugin.py"))
    run = make_run(tmp_path / "run", n_done=1, failed=False)
    code, _, err = _cli(["export", str(run), "--out", str(tmp_path / "ds"), "--formats", "ply"],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "broken_plugin.py" in err
    assert "broken on purpose" in err and not (tmp_path / "ds").exists()
    monkeypatch.setenv("SCTD3D_PLUGINS", str(PLUGINS / "no_such_plugin.py"))
    code, _, err = _cli(["export", str(run), "--out", str(tmp_path / "ds"), "--formats", "ply"],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
