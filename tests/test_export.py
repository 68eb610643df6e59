"""`sctd3d export`: a synthetic finished run -> dataset (files, index, shards, card, resume)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export_fixtures import asset_id, make_run
from pipeline.cli import main
from pipeline.export import ExportError, export_dataset
from stages.export.select import FilterError, select
from stages.export.splat_transform import find_splat_transform

HAVE_SPZ = find_splat_transform() is not None
FORMATS = "ply,spz" if HAVE_SPZ else "ply"
VIEWS, RES, RANDOM = 6, 32, 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    run = make_run(base / "run", n_done=3, missing=True, truncated=True, failed=True)
    out = base / "ds"
    s = export_dataset(str(run), str(out), views=VIEWS, resolution=RES, formats=FORMATS,
                       shard_size=2, random_views=RANDOM, seed=3,
                       where="status = 'done' OR status = 'failed'")
    return run, out, s


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


# ------------------------------------------------------------------------------- the filter
def test_where_unknown_column_and_syntax_error_name_it_and_the_columns(exported, capsys):
    run, _, _ = exported
    table = __import__("common.manifest", fromlist=["read"]).read(str(run))
    with pytest.raises(FilterError, match=r"unknown column 'clip'.*available columns: asset_id, "
                                          r"prompt.*clip_l"):
        select(table, "clip >= 0.28")
    with pytest.raises(FilterError, match=r"syntax error.*available columns"):
        select(table, "status = = 'done'")
    # no file access from a filter (a real engine, sandboxed: it can only select rows)
    with pytest.raises(FilterError, match="give one condition"):
        select(table, "1=1) UNION SELECT * FROM read_csv('/etc/passwd') --")
    with pytest.raises(FilterError, match="table functions"):
        select(table, "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0")
    got = select(table, "status = 'done' AND clip_l >= 0.28")
    assert sorted(got.column("asset_id").to_pylist()) == sorted(
        [asset_id(2), asset_id(100), asset_id(101)])  # clip_l = 0.2 + 0.05 i


def test_cli_bad_inputs_are_one_line_exit_2(exported, tmp_path, capsys):
    run, _, _ = exported
    code, _, err = _cli(["export", str(run), "--out", str(tmp_path / "d1"), "--where",
                         "clip >= 1", "--formats", "ply"], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown column 'clip'" in err
    assert "clip_l" in err and "Traceback" not in err
    code, _, err = _cli(["export", str(run), "--out", str(tmp_path / "d2"), "--where",
                         "clip_l > 50", "--formats", "ply"], capsys)
    assert code == 2 and err.count("\n") == 1 and "selects no assets" in err
    assert not (tmp_path / "d2").exists()  # nothing written for an empty selection
    code, _, err = _cli(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "d3")], capsys)
    assert code == 2 and "does not exist" in err and not (tmp_path / "nope").exists()
    (tmp_path / "notarun").mkdir()
    code, _, err = _cli(["export", str(tmp_path / "notarun"), "--out", str(tmp_path / "d4")], capsys)
    assert code == 2 and "is not a run" in err and err.count("\n") == 1
    code, _, err = _cli(["export", str(run), "--out", str(tmp_path / "d5"), "--formats",
                         "ply,gltf"], capsys)
    assert code == 2 and "unknown export format 'gltf'" in err and "splat" in err


# ------------------------------------------------------------------------------- per asset
def test_bad_assets_are_recorded_skips_and_nothing_else_is_lost(exported):
    _, out, s = exported
    skipped = {r["asset_id"]: r["reason"] for r in json.loads((out / "skipped.json").read_text())}
    assert "asset.ply missing" in skipped[asset_id(100)]
    assert "unreadable asset.ply" in skipped[asset_id(101)]
    assert "status 'failed'" in skipped[asset_id(102)]
    assert s.exported == 3 and s.skipped == 3
    for i in range(3):
        assert (out / "assets" / asset_id(i)[:2] / asset_id(i) / "export.json").is_file()
    for i in (100, 101, 102):
        assert not (out / "assets" / asset_id(i)[:2] / asset_id(i)).exists()


def test_asset_folder_rgba_depth_and_ply_copy(exported):
    run, out, _ = exported
    aid = asset_id(0)
    adir = out / "assets" / aid[:2] / aid
    src = run / "assets" / aid[:2] / aid / "asset.ply"
    assert (adir / "asset.ply").read_bytes() == src.read_bytes()  # byte-compatible copy
    tf = json.loads((adir / "transforms.json").read_text())
    assert tf["camera_convention"] == "opengl" and (tf["w"], tf["h"]) == (RES, RES)
    assert len(tf["frames"]) == VIEWS + RANDOM
    assert [f["view_set"] for f in tf["frames"]] == ["orbit"] * VIEWS + ["random"] * RANDOM
    for fr in tf["frames"]:
        rgba = np.asarray(Image.open(adir / fr["file_path"]))
        assert rgba.shape == (RES, RES, 4) and rgba.dtype == np.uint8
        depth = np.asarray(Image.open(adir / fr["depth_file_path"]))
        assert depth.dtype == np.uint16 or depth.dtype == np.int32
        # alpha is the accumulated opacity: transparent background, opaque object centre
        assert (rgba[..., 3] == 0).any() and rgba[..., 3].max() > 200
        # depth only where something was hit, and inside the object's depth range
        hit = rgba[..., 3] > 128
        d = depth.astype(np.float64) * tf["depth_scale"]
        assert (d[rgba[..., 3] == 0] == 0).all() and d[hit].min() > 1.0 and d[hit].max() < 6.0


def test_depth_png_matches_the_renderer(exported):
    import torch

    from kernels.ply import load_ply
    from kernels.render import render
    from stages.export.views import orbit

    run, out, _ = exported
    aid = asset_id(1)
    adir = out / "assets" / aid[:2] / aid
    tf = json.loads((adir / "transforms.json").read_text())
    rc = json.loads((run / "run.json").read_text())["config"]["render"]  # the run's orbit
    cams = orbit(VIEWS, RES, rc["elevation_deg"], rc["radius"], rc["fovy"])
    o = render(load_ply(str(run / "assets" / aid[:2] / aid / "asset.ply")), cams, backend="torch")
    for i in range(VIEWS):
        d = np.asarray(Image.open(adir / tf["frames"][i]["depth_file_path"])).astype(np.float64)
        a = o.alpha[i, ..., 0].numpy()
        ref = o.depth[i, ..., 0].numpy()
        m = a > 0.05
        assert np.abs(d[m] * tf["depth_scale"] - ref[m]).max() <= tf["depth_scale"]


def test_random_views_are_seeded(exported, tmp_path):
    run, out, _ = exported
    aid = asset_id(0)
    tf1 = json.loads((out / "assets" / aid[:2] / aid / "transforms.json").read_text())
    export_dataset(str(run), str(tmp_path / "other"), views=1, resolution=16, formats="ply",
                   random_views=RANDOM, seed=4)
    tf2 = json.loads((tmp_path / "other" / "assets" / aid[:2] / aid / "transforms.json").read_text())
    r1 = [f["transform_matrix"] for f in tf1["frames"] if f["view_set"] == "random"]
    r2 = [f["transform_matrix"] for f in tf2["frames"] if f["view_set"] == "random"]
    assert len(r1) == len(r2) == RANDOM and not np.allclose(r1, r2)  # another seed, other views
    # and the same seed on another asset gives that asset its own views
    tf3 = json.loads((out / "assets" / asset_id(1)[:2] / asset_id(1) / "transforms.json").read_text())
    r3 = [f["transform_matrix"] for f in tf3["frames"] if f["view_set"] == "random"]
    assert not np.allclose(r1, r3)


# ------------------------------------------------------------------------------- index
def test_index_reads_with_datasets_pandas_and_duckdb(exported, tmp_path):
    import duckdb
    import pandas as pd
    from datasets import load_dataset

    _, out, _ = exported
    path = str(out / "index.parquet")
    df = pd.read_parquet(path)
    assert sorted(df["asset_id"]) == sorted(asset_id(i) for i in range(3))
    for col in ("prompt", "seed", "method", "config_hash", "clip_l", "toy_psnr", "ply_path",
                "transforms_path", "num_views", "shard"):
        assert col in df.columns
    assert (df["num_views"] == VIEWS).all() and (df["num_random_views"] == RANDOM).all()
    for rel in list(df["ply_path"]) + list(df["transforms_path"]) + list(df["preview_path"]):
        assert not os.path.isabs(rel) and (out / rel).is_file()
    ds = load_dataset("parquet", data_files=path, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 3 and set(ds["asset_id"]) == set(df["asset_id"])
    # the preview is an Image feature (what the Hub's viewer shows as pictures), per asset
    from datasets import Image as HFImage

    assert isinstance(ds.features["preview"], HFImage)
    for row in ds:
        im = row["preview"]
        assert im.mode == "RGBA" and im.size == (RES, RES)
        ref = Image.open(out / row["asset_dir"] / "images" / "000.png")
        assert np.array_equal(np.asarray(im), np.asarray(ref))  # view 0 (under 256 px: as is)
    con = duckdb.connect()
    n = con.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE clip_l >= 0.25").fetchall()
    assert n[0][0] == 2


def test_webdataset_shards_iterate(exported):
    import webdataset as wds

    _, out, _ = exported
    tars = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    assert [os.path.basename(t) for t in tars] == ["shard-00000.tar", "shard-00001.tar"]
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode())
    assert sorted(s["__key__"] for s in samples) == sorted(asset_id(i) for i in range(3))
    for s in samples:
        row = s["json"]
        assert s["prompt.txt"] == row["prompt"]
        tf = s["transforms.json"]
        assert tf["camera_convention"] == "opengl" and len(tf["frames"]) == VIEWS + RANDOM
        view = Image.open(io.BytesIO(s["view000.png"]))
        assert view.mode == "RGBA" and view.size == (RES, RES) and "viewr001.png" in s
        assert isinstance(s["ply"], bytes) and s["ply"].startswith(b"ply")
        if HAVE_SPZ:
            assert isinstance(s["spz"], bytes) and s["spz"][:2] == b"\x1f\x8b"  # SPZ v3: gzip


def test_webdataset_decoders_keep_depth_and_alpha(exported):
    """Through webdataset's own pipeline and decoders: `.decode("rgba8")` keeps the alpha of the
    views, the built-in npz decoder gives the depth in world units, the same as the asset
    folder's 16-bit PNGs (to float16 precision), frame by frame."""
    import webdataset as wds

    _, out, _ = exported
    tars = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    n = 0
    for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("rgba8"):
        aid = s["__key__"]
        adir = out / "assets" / aid[:2] / aid
        tf = json.loads((adir / "transforms.json").read_text())
        depth = s["depth.npz"]["depth"]
        assert depth.dtype == np.float16 and depth.shape == (VIEWS + RANDOM, RES, RES)
        assert not any(k.startswith("depth") and k.endswith(".png") for k in s)
        for k, fr in enumerate(tf["frames"]):
            ref = np.asarray(Image.open(adir / fr["depth_file_path"])).astype(np.float64) * 1e-3
            assert np.allclose(depth[k].astype(np.float64), ref, rtol=1e-3, atol=1e-6)
            stem = os.path.basename(fr["file_path"])[:-4]
            view = s[f"view{stem}.png"]
            assert view.shape == (RES, RES, 4)
            assert np.array_equal(view, np.asarray(Image.open(adir / fr["file_path"])))
        assert (depth[0] > 1.0).any() and (s["view000.png"][..., 3] == 0).any()
        n += 1
    assert n == 3


def test_shards_close_at_the_byte_target(exported, tmp_path):
    from stages.export import shards

    assert shards.plan({"a": 5, "b": 5, "c": 5}, 10) == [["a", "b"], ["c"]]
    assert shards.plan({"a": 50, "b": 5}, 10) == [["a"], ["b"]]  # too big alone: own shard
    assert shards.plan({"a": 1, "b": 1, "c": 1}, 100, max_assets=2) == [["a", "b"], ["c"]]
    run, out, _ = exported
    sizes = [json.loads((p / "export.json").read_text())["meta"]["file_bytes"]
             for p in (out / "assets").glob("*/*")]
    target = int(max(sizes) * 1.5)  # room for one asset per shard, never two
    s = export_dataset(str(run), str(tmp_path / "ds"), views=VIEWS, resolution=RES, formats="ply",
                       random_views=RANDOM, seed=3, shard_bytes=target)
    assert s.shards == 3
    for tar in (tmp_path / "ds" / "shards").glob("*.tar"):
        assert tar.stat().st_size <= target + 16 * 1024  # tar headers and the small members


# ------------------------------------------------------------------------------- card
def test_dataset_card_front_matter_counts_plot_and_grid(exported):
    import yaml

    _, out, _ = exported
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "other" and "TODO" in text.split("---\n")[1]
    # the Hub wants license_name and license_link with `other`; the link resolves
    assert front["license_name"] and (out / front["license_link"]).is_file()
    assert "TODO" in (out / front["license_link"]).read_text()
    # the run's training length only (demo: 150 iterations x 2 views; its base config's
    # "600 iterations" note is stale), no metric rows with n = 0, captions under the grid
    assert "150 iterations x 2 views per step" in text and "600 iterations" not in text
    assert "| 0 | - |" not in text and "| toy_psnr | 3 |" in text
    grid_at = text.index("](card/samples.png)")
    for i in range(3):
        assert text.index(f"| prompt number {i} | `{asset_id(i)}` |") > grid_at
    assert front["task_categories"] == ["text-to-3d"] and front["size_categories"] == ["n<1K"]
    assert front["configs"][0]["data_files"][0]["path"] == "index.parquet"
    assert "`cafe0123`" in text and "0.1.0+test" in text  # config hash, code version
    assert "done 5, failed 1, rejected 0" in text  # counts by status of the run
    assert "status = 'done' OR status = 'failed'" in text and "skipped: 3" in text
    assert "toy world: 32x32 pixel renders" in text  # the run config's deviations
    assert '`.depth.npz`' in text and '.decode("rgba8")' in text
    assert '"camera_convention": "opengl"' in text
    for png in ("card/metrics.png", "card/samples.png"):
        assert f"]({png})" in text
        im = Image.open(out / png)
        assert im.size[0] > 100 and np.asarray(im.convert("L")).std() > 1  # not blank


# ------------------------------------------------------------------------------- resume
def test_rerun_rewrites_nothing(exported):
    run, out, _ = exported
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "run.lock"]
    before = {p: p.stat().st_mtime_ns for p in files}
    s = export_dataset(str(run), str(out), views=VIEWS, resolution=RES, formats=FORMATS,
                       shard_size=2, random_views=RANDOM, seed=3,
                       where="status = 'done' OR status = 'failed'")
    assert (s.exported, s.reused, s.shards_reused) == (3, 3, 2)
    after = {p: p.stat().st_mtime_ns for p in files}
    assert before == after
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(files)


def test_interrupted_export_resumes_and_keeps_finished_assets(tmp_path, monkeypatch):
    import stages.export.asset as asset_mod
    from pipeline import export as export_mod

    run = make_run(tmp_path / "run", n_done=3, failed=False)
    out = tmp_path / "ds"
    real = asset_mod.build_asset
    victim = asset_id(1)

    def crash_on_victim(aid, ply, spec, *rest):
        if aid == victim:
            raise KeyboardInterrupt("worker killed")  # an interruption, not a bad asset
        return real(aid, ply, spec, *rest)

    monkeypatch.setattr(export_mod, "build_asset", crash_on_victim)
    with pytest.raises(KeyboardInterrupt):
        export_dataset(str(run), str(out), views=2, resolution=16, formats="ply")
    vdir = out / "assets" / victim[:2] / victim
    assert not vdir.exists()  # nothing half-written is visible
    assert not list((out / "assets" / victim[:2]).glob(".tmp-*"))
    done_before = {p: p.stat().st_mtime_ns for p in (out / "assets").rglob("*") if p.is_file()}
    monkeypatch.setattr(export_mod, "build_asset", real)
    (out / "run.lock").unlink(missing_ok=True)
    s = export_dataset(str(run), str(out), views=2, resolution=16, formats="ply")
    assert s.exported == 3 and s.reused == len({p.parts[-3] for p in done_before
                                                if p.name == "export.json"})
    assert (vdir / "export.json").is_file()
    for p, m in done_before.items():
        assert p.stat().st_mtime_ns == m


def test_changed_settings_reexport_the_asset(exported, tmp_path):
    run, _, _ = exported
    out = tmp_path / "ds"
    export_dataset(str(run), str(out), views=2, resolution=16, formats="ply")
    s = export_dataset(str(run), str(out), views=3, resolution=16, formats="ply")
    assert s.reused == 0
    tf = json.loads((out / "assets" / asset_id(0)[:2] / asset_id(0) / "transforms.json").read_text())
    assert len(tf["frames"]) == 3
    assert not list((out / "assets" / asset_id(0)[:2] / asset_id(0) / "images").glob("003.png"))


def test_shard_is_a_valid_tar_with_fixed_metadata(exported):
    _, out, _ = exported
    with tarfile.open(out / "shards" / "shard-00000.tar") as t:
        members = t.getmembers()
    assert members and all(m.mtime == 0 and m.uid == 0 for m in members)
    names = [m.name for m in members]
    assert all("/" not in n for n in names)


def test_demo_prints_the_export_command(monkeypatch, capsys, tmp_path):
    import pipeline.demo as demo_mod

    class FakeSummary:
        out = str(tmp_path / "demo")
        failed = 0

        def line(self):
            return "demo: 1 done"

        def where(self):
            return "assets: ..."

        def exit_code(self):
            return 0

    monkeypatch.setattr(demo_mod, "demo", lambda *a, **k: FakeSummary())
    code, out, _ = _cli(["demo", "--out", str(tmp_path / "demo"), "--prompts", "1"], capsys)
    assert code == 0
    line = [ln for ln in out.splitlines() if "sctd3d export" in ln]
    assert line and f"sctd3d export {tmp_path / 'demo'} --out {tmp_path / 'demo'}-dataset" in line[0]


def test_bad_options_are_export_errors(exported, tmp_path):
    run, _, _ = exported
    with pytest.raises(ExportError, match="--views 0"):
        export_dataset(str(run), str(tmp_path / "x"), views=0, formats="ply")
    with pytest.raises(ExportError, match="run folder itself"):
        export_dataset(str(run), str(run), formats="ply")


def test_preview_png_alpha_is_straight(exported):
    """RGB is straight (un-premultiplied) colour: semi-transparent edge pixels keep their hue."""
    _, out, _ = exported
    aid = asset_id(2)
    rgba = np.asarray(Image.open(io.BytesIO(
        (out / "assets" / aid[:2] / aid / "images" / "000.png").read_bytes())))
    edge = (rgba[..., 3] > 20) & (rgba[..., 3] < 120)
    assert edge.any()
    assert rgba[edge][:, :3].max(axis=1).mean() > rgba[edge][:, 3].mean()


def test_object_store_dataset_marker_last_and_resume(tmp_path):
    """On an object store (memory://) an asset counts as done only once its export.json exists."""
    import fsspec
    import pandas as pd

    run = make_run(tmp_path / "run", n_done=2, failed=False)
    uri = f"memory://export-{tmp_path.name}"
    s = export_dataset(str(run), uri, views=2, resolution=16, formats="ply", shard_size=1)
    assert (s.exported, s.shards) == (2, 2)
    fs = fsspec.filesystem("memory")
    root = uri[len("memory://"):]
    aid = asset_id(1)
    fs.rm(f"/{root}/assets/{aid[:2]}/{aid}/export.json")  # as if killed before the marker
    s = export_dataset(str(run), uri, views=2, resolution=16, formats="ply", shard_size=1)
    assert (s.exported, s.reused) == (2, 1)
    assert fs.exists(f"/{root}/assets/{aid[:2]}/{aid}/export.json")
    df = pd.read_parquet(io.BytesIO(fs.cat_file(f"/{root}/index.parquet")))
    assert sorted(df["asset_id"]) == sorted([asset_id(0), aid])
    # other settings: the asset's files are replaced, an earlier view that no longer exists removed
    export_dataset(str(run), uri, views=1, resolution=16, formats="ply", shard_size=1)
    assert fs.exists(f"/{root}/assets/{aid[:2]}/{aid}/images/000.png")
    assert not fs.exists(f"/{root}/assets/{aid[:2]}/{aid}/images/001.png")
    fs.rm(f"/{root}", recursive=True)


def test_dataset_files_respect_the_umask(exported):
    _, out, _ = exported
    umask = os.umask(0)
    os.umask(umask)
    for rel in ("shards/shard-00000.tar", "index.parquet", "README.md",
                f"assets/{asset_id(0)[:2]}/{asset_id(0)}/images/000.png"):
        assert (out / rel).stat().st_mode & 0o777 == 0o666 & ~umask, rel


def test_spz_without_the_tool_is_one_line_before_any_write(exported, tmp_path, capsys,
                                                            monkeypatch):
    run, _, _ = exported
    monkeypatch.setenv("SCTD3D_SPLAT_TRANSFORM", str(tmp_path / "no-such-tool"))
    code, _, err = _cli(["export", str(run), "--out", str(tmp_path / "d"), "--formats", "ply,spz"],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "splat-transform" in err
    assert "--formats ply" in err and not (tmp_path / "d").exists()


def test_a_non_hex_asset_id_is_skipped_not_turned_into_a_path(tmp_path):
    import datetime as dt

    from common import manifest

    run = make_run(tmp_path / "run", n_done=1, failed=False)
    manifest.commit(str(run), {"asset_id": "Not-A-Hex-Id", "prompt": "x", "status": "done",
                               "finished_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)})
    out = tmp_path / "ds"
    s = export_dataset(str(run), str(out), views=1, resolution=16, formats="ply")
    assert (s.exported, s.skipped) == (1, 1)
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped[0]["asset_id"] == "Not-A-Hex-Id" and "hex" in skipped[0]["reason"]
    assert not list(out.rglob("Not-A-Hex-Id*"))


def test_default_views_fit_the_renderer(exported, tmp_path, monkeypatch):
    """Without --views/--resolution: 120 views at 512 px where renders run on a GPU, 24 at 256 px
    on CPUs (the torch renderer; RESULTS.md "Export" has the time per asset)."""
    import torch

    from pipeline.export import default_views

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_views("local", {}) == (24, 256)
    assert default_views("ray", {"config": {"pipeline": {"gpus_per_worker": 1}}}) == (120, 512)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_views("local", {}) == (120, 512)
