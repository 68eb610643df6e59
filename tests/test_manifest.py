"""common.manifest: explicit v1 schema, atomic per-asset parts, dedup, compaction, show."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import manifest
from common.storage import open_storage

DESIGN_V1 = ["asset_id", "prompt", "seed", "method", "prior", "config_hash", "code_version", "status",
             "error", "attempts", "started_at", "finished_at", "wall_s", "gpu_s", "device",
             "num_gaussians", "asset_uri", "frames_uri", "video_uri", "clip_l", "image_reward",
             "toy_psnr", "toy_rprec", "schema_version"]


def _t(s):
    return dt.datetime(2026, 11, 25, 0, 0, s, tzinfo=dt.timezone.utc)


def test_schema_v1_columns_in_order():
    assert list(manifest.SCHEMA.names[: len(DESIGN_V1)]) == DESIGN_V1
    assert manifest.SCHEMA.field("status").type == pa.string()
    assert manifest.SCHEMA.field("finished_at").type == pa.timestamp("ms", tz="UTC")
    assert manifest.SCHEMA.metadata[b"sctd3d.manifest.schema_version"] == b"2"


def test_make_record_validates():
    r = manifest.make_record(asset_id="ab12", status="done", prompt="p")
    assert r["schema_version"] == 2 and r["clip_l"] is None and set(r) == set(manifest.COLUMNS)
    with pytest.raises(manifest.ManifestError, match="not one of"):
        manifest.make_record(asset_id="ab12", status="finished")
    with pytest.raises(manifest.ManifestError, match="unknown manifest columns"):
        manifest.make_record(asset_id="ab12", status="done", colour="red")


def test_commit_read_dedup_compact_show(tmp_path):
    st = open_storage(str(tmp_path / "run"))
    assert manifest.read(st).num_rows == 0
    manifest.commit(st, {"asset_id": "aa01", "status": "failed", "error": "worker died",
                         "attempts": 1, "finished_at": _t(1)})
    manifest.commit(st, {"asset_id": "bb02", "status": "done", "method": "sds", "wall_s": 2.0,
                         "toy_psnr": 20.0, "finished_at": _t(2), "tags": ["x"]})
    manifest.commit_many(st, [{"asset_id": "r01", "status": "rejected", "error": "empty prompt"}],
                         "rejected-1")
    assert sorted(st.ls("manifest/parts")) == ["aa01.parquet", "bb02.parquet", "rejected-1.parquet"]
    t = manifest.read(st)
    assert t.schema == manifest.SCHEMA
    assert manifest.counts(t) == {"done": 1, "failed": 1, "rejected": 1}

    uri = manifest.compact(st)
    assert uri.endswith("manifest/manifest.parquet") and st.ls("manifest/parts") == []
    on_disk = pq.read_table(uri)
    assert on_disk.schema.names == list(manifest.COLUMNS) and on_disk.num_rows == 3

    # a later success for the failed asset wins over the compacted failure; re-compaction merges
    manifest.commit(st, {"asset_id": "aa01", "status": "done", "attempts": 2, "finished_at": _t(3)})
    rows = manifest.records_by_id(st)
    assert rows["aa01"]["status"] == "done" and rows["aa01"]["attempts"] == 2
    manifest.compact(st)
    assert manifest.counts(manifest.read(st)) == {"done": 2, "failed": 0, "rejected": 1}
    text = manifest.show(st)
    assert "3 assets (done 2, failed 0, rejected 1)" in text
    assert "toy_psnr: mean 20.0000" in text and "rejected: empty prompt" in text
    assert st.orphan_temp_files() == []


def test_older_part_without_new_columns_is_conformed(tmp_path):
    st = open_storage(str(tmp_path))
    old = pa.table({"asset_id": ["cc03"], "status": ["done"], "schema_version": pa.array([1], pa.int32())})
    st.write_bytes("manifest/parts/cc03.parquet", _pq_bytes(old))
    t = manifest.read(st)
    assert t.schema == manifest.SCHEMA and t.column("asset_id").to_pylist() == ["cc03"]
    assert t.column("tags").to_pylist() == [None]


def test_corrupt_part_is_named_and_not_counted(tmp_path, caplog):
    st = open_storage(str(tmp_path))
    manifest.commit(st, {"asset_id": "aa01", "status": "done"})
    st.write_bytes("manifest/parts/dd04.parquet", b"PAR1 truncated")
    assert manifest.read(st).column("asset_id").to_pylist() == ["aa01"]
    assert "dd04.parquet is not a sctd3d manifest record (not a readable Parquet file" in caplog.text
    st.write_bytes(manifest.COMPACTED, b"PAR1 truncated")  # the compacted file is ours: an error
    with pytest.raises(manifest.ManifestError, match="manifest.parquet"):
        manifest.read(st)


def _pq_bytes(table):
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# ---------------------------------------------------------------- issue 14: compaction races, URIs
def test_compact_never_deletes_a_part_rewritten_while_it_ran(tmp_path, monkeypatch):
    """The driver overwrites a part (failed -> done) after compact read it and before compact
    removes it: the newer record must survive (the old compact deleted it)."""
    st = open_storage(str(tmp_path / "run"))
    manifest.commit(st, {"asset_id": "aa01", "status": "failed", "error": "oom", "finished_at": _t(1)})
    manifest.commit(st, {"asset_id": "bb02", "status": "done", "finished_at": _t(2)})
    driver = open_storage(st.root)
    real_write = type(st).write_bytes

    def write_then_driver_commits(self, rel, data):
        out = real_write(self, rel, data)
        if rel == manifest.COMPACTED:  # compaction's merged file is durable; parts not yet removed
            manifest.commit(driver, {"asset_id": "aa01", "status": "done", "attempts": 2,
                                     "finished_at": _t(3)})
        return out

    monkeypatch.setattr(st, "write_bytes", write_then_driver_commits.__get__(st))
    manifest.compact(st)
    rows = manifest.records_by_id(driver)
    assert rows["aa01"]["status"] == "done" and rows["aa01"]["attempts"] == 2
    assert driver.ls(manifest.PARTS_DIR) == ["aa01.parquet"]  # kept: its bytes changed
    manifest.compact(driver)  # the next compaction folds it in
    assert driver.ls(manifest.PARTS_DIR) == [] and manifest.records_by_id(driver)["aa01"]["status"] == "done"


def test_compact_refuses_while_a_run_holds_the_lock(tmp_path):
    from common.lock import LockHeld, RunLock

    st = open_storage(str(tmp_path / "run"))
    manifest.commit(st, {"asset_id": "aa01", "status": "done"})
    lock = RunLock(st).acquire()
    try:
        with pytest.raises(LockHeld, match="in use by another run"):
            manifest.compact(st)
    finally:
        lock.release()
    assert st.ls(manifest.PARTS_DIR) == ["aa01.parquet"] and not st.exists(manifest.COMPACTED)


def test_read_survives_a_part_vanishing_between_listing_and_reading(tmp_path, monkeypatch):
    """A compaction (e.g. another host's) finishes between the reader's listing and its read of a
    part: the reader re-lists and still sees every record (the old reader raised 'No such file')."""
    st = open_storage(str(tmp_path / "run"))
    for i, aid in enumerate(("aa01", "bb02", "cc03")):
        manifest.commit(st, {"asset_id": aid, "status": "done", "finished_at": _t(i)})
    other = open_storage(st.root)
    real_read = type(st).read_bytes
    fired = []

    def read_bytes(self, *parts):
        if parts == ("manifest/parts/cc03.parquet",) and not fired:
            fired.append(1)
            manifest.compact_locked(other)  # folds cc03 into manifest.parquet and removes the part
        return real_read(self, *parts)

    monkeypatch.setattr(st, "read_bytes", read_bytes.__get__(st))
    t = manifest.read(st)
    assert fired and sorted(t.column("asset_id").to_pylist()) == ["aa01", "bb02", "cc03"]


def test_uris_are_stored_relative_and_a_moved_run_keeps_them(tmp_path):
    st = open_storage(str(tmp_path / "run"))
    inside = st.uri("assets", "aa", "aa01", "asset.ply")
    outside = str(tmp_path / "elsewhere" / "asset.ply")
    manifest.commit(st, {"asset_id": "aa01", "status": "done", "asset_uri": inside,
                         "frames_uri": st.uri("assets", "aa", "aa01", "frames")})
    manifest.commit(st, {"asset_id": "bb02", "status": "done", "asset_uri": outside,
                         "video_uri": "s3://bucket/x.mp4"})
    raw = pq.read_table(tmp_path / "run" / "manifest" / "parts" / "aa01.parquet").to_pylist()[0]
    assert raw["asset_uri"] == "assets/aa/aa01/asset.ply" and raw["frames_uri"] == "assets/aa/aa01/frames"
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = open_storage(str(tmp_path / "moved"))
    manifest.compact(moved)  # compaction keeps them relative
    raw = pq.read_table(tmp_path / "moved" / "manifest" / "manifest.parquet").to_pylist()
    assert {r["asset_id"]: r["asset_uri"] for r in raw}["aa01"] == "assets/aa/aa01/asset.ply"
    rows = manifest.records_by_id(moved)
    assert rows["aa01"]["asset_uri"] == str(tmp_path / "moved" / "assets" / "aa" / "aa01" / "asset.ply")
    assert rows["bb02"]["asset_uri"] == outside and rows["bb02"]["video_uri"] == "s3://bucket/x.mp4"
    assert rows["bb02"]["frames_uri"] is None


def test_dedup_rule_vectorised(tmp_path):
    rows = [{"asset_id": "bb", "status": "failed", "finished_at": _t(1), "error": "old"},
            {"asset_id": "bb", "status": "failed", "finished_at": _t(5), "error": "new"},
            {"asset_id": "aa", "status": "failed", "finished_at": _t(9)},
            {"asset_id": "aa", "status": "done", "finished_at": _t(2)},
            {"asset_id": "cc", "status": "rejected"},
            {"asset_id": "cc", "status": "failed", "finished_at": _t(3)}]
    t = manifest.dedup(manifest.to_table(rows))
    got = {r["asset_id"]: (r["status"], r["error"]) for r in t.to_pylist()}
    assert t.column("asset_id").to_pylist() == ["aa", "bb", "cc"]
    assert got == {"aa": ("done", None), "bb": ("failed", "new"), "cc": ("rejected", None)}


def test_cli_compact_during_a_run_is_one_line(tmp_path, capsys):
    from pipeline.cli import main
    from common.lock import RunLock

    st = open_storage(str(tmp_path / "run"))
    manifest.commit(st, {"asset_id": "aa01", "status": "done"})
    lock = RunLock(st).acquire()
    try:
        with pytest.raises(SystemExit) as e:
            main(["manifest", "compact", st.root])
    finally:
        lock.release()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("sctd3d manifest: error: output root ") and "in use by another run" in err
    assert st.ls(manifest.PARTS_DIR) == ["aa01.parquet"]


def test_many_parts_scan_equals_file_by_file(tmp_path, monkeypatch):
    """From DATASET_MIN_FILES parts on, one dataset scan reads them: same table as the per-file
    path, older parts conformed, a corrupt part still named."""
    st = open_storage(str(tmp_path / "run"))
    for i in range(70):
        manifest.commit(st, {"asset_id": f"a{i:03d}", "status": "failed" if i % 7 else "done",
                             "finished_at": _t(i % 50), "tags": ["x"], "asset_uri": st.uri("assets", f"{i}")})
    manifest.commit(st, {"asset_id": "a001", "status": "done", "finished_at": _t(55)})
    old = pa.table({"asset_id": ["zz99"], "status": ["done"], "schema_version": pa.array([1], pa.int32())})
    st.write_bytes("manifest/parts/zz99.parquet", _pq_bytes(old))
    scanned = manifest.read(st)
    monkeypatch.setattr(manifest, "DATASET_MIN_FILES", 10**9)
    assert scanned.equals(manifest.read(st)) and scanned.num_rows == 71
    assert manifest.records_by_id(st)["a001"]["status"] == "done"
    monkeypatch.setattr(manifest, "DATASET_MIN_FILES", 64)
    st.write_bytes("manifest/parts/bad.parquet", b"PAR1 truncated")
    assert manifest.read(st).equals(scanned)  # named in one line and skipped (issue 26 item 9)


def test_compaction_of_many_parts_keeps_every_record(tmp_path):
    st = open_storage(str(tmp_path / "run"))
    for i in range(80):
        manifest.commit(st, {"asset_id": f"b{i:03d}", "status": "done", "finished_at": _t(i % 60)})
    manifest.commit_many(st, [{"asset_id": "r01", "status": "rejected"}], "rejected-x")
    before = manifest.read(st)
    manifest.compact(st)
    assert st.ls(manifest.PARTS_DIR) == [] and manifest.read(st).equals(before) and before.num_rows == 81


# ---------------------------------------------------------------- issue 26 item 9: foreign parts
FOREIGN = {  # name -> (table or bytes, words of the reason)
    "int-id.parquet": (pa.table({"asset_id": [123], "status": ["done"],
                                 "schema_version": pa.array([2], pa.int32())}),
                       "asset_id is int64, not a string"),
    "pandas.parquet": (pa.table({"asset_id": ["ee05"], "status": ["done"]}),
                       "no ['schema_version'] column"),
    "other.parquet": (pa.table({"x": [1], "y": ["z"]}), "columns ['x', 'y'] are not manifest columns"),
    "status.parquet": (pa.table({"asset_id": ["ff06"], "status": ["finished"],
                                 "schema_version": pa.array([2], pa.int32())}),
                       "status 'finished' is not one of"),
    "newer.parquet": (pa.table({"asset_id": ["ab07"], "status": ["done"],
                                "schema_version": pa.array([9], pa.int32())}),
                      "schema_version is not 1 to 2"),
    "seed-text.parquet": (pa.table({"asset_id": ["ab08"], "status": ["done"], "seed": ["seven"],
                                    "schema_version": pa.array([2], pa.int32())}),
                          "column 'seed' is string, not int64"),
    "not-parquet.parquet": (b"PAR1 this is not parquet PAR1", "not a readable Parquet file"),
    "climbs.parquet": (pa.table({"asset_id": ["ab09"], "status": ["done"], "asset_uri": ["assets/../../x/asset.ply"],
                                 "schema_version": pa.array([2], pa.int32())}),
                       "asset_uri 'assets/../../x/asset.ply' leaves the run folder"),
}


def _plant_foreign(st):
    for name, (content, _) in FOREIGN.items():
        st.write_bytes(f"{manifest.PARTS_DIR}/{name}",
                       content if isinstance(content, bytes) else _pq_bytes(content))


@pytest.mark.parametrize("n_parts", [2, 70])  # the per-file path and the dataset scan
def test_foreign_parts_are_never_counted_and_compaction_quarantines_them(tmp_path, caplog,
                                                                          n_parts):
    """A Parquet file dropped into manifest/parts crashed `run`/`compact` (non-nullable
    schema_version) and was counted by show/report/export (an asset id 123 counted as done)."""
    st = open_storage(str(tmp_path / "run"))
    for i in range(n_parts):
        manifest.commit(st, {"asset_id": f"a{i:03d}", "status": "done", "finished_at": _t(i % 50)})
    _plant_foreign(st)
    table = manifest.read(st)
    assert sorted(table.column("asset_id").to_pylist()) == [f"a{i:03d}" for i in range(n_parts)]
    assert manifest.counts(table) == {"done": n_parts, "failed": 0, "rejected": 0}
    assert f"{n_parts} assets (done {n_parts}," in manifest.show(st)
    from stages.report import read_manifest  # the report (and export) read through manifest.read

    assert sorted(read_manifest(st.root)[1]["asset_id"]) == [f"a{i:03d}" for i in range(n_parts)]
    for name, (_, why) in FOREIGN.items():  # one line per file, naming it and why
        lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert len(lines) == 1 and why in lines[0] and "not counted" in lines[0], (name, lines)
    caplog.clear()
    manifest.read(st)  # said once per file and process
    assert "not a sctd3d manifest record" not in caplog.text

    manifest.compact(st)  # the lock holder moves them aside, merges the rest
    assert st.ls(manifest.PARTS_DIR) == []
    assert st.ls(manifest.QUARANTINE_DIR) == sorted(FOREIGN)
    for name in FOREIGN:
        assert sum(f"{name} is not a sctd3d manifest record" in r.getMessage() and "moved it to"
                   in r.getMessage() for r in caplog.records) == 1
    assert manifest.read(st).num_rows == n_parts
    # quarantined bytes are the originals (nothing lost: the user can look at them)
    raw = FOREIGN["not-parquet.parquet"][0]
    assert st.read_bytes(f"{manifest.QUARANTINE_DIR}/not-parquet.parquet") == raw


def test_run_quarantines_a_foreign_part_and_finishes(tmp_path, monkeypatch, caplog):
    import fakes
    from common.config import load_config
    from pipeline.run import run_batch

    def generate(cfg, prompt, seed, asset_dir, progress=False):
        with open(f"{asset_dir}/asset.ply", "w") as f:
            f.write("ply\n")
        return fakes.result(asset_dir)

    fakes.use_generate(monkeypatch, generate)
    out = tmp_path / "out"
    st = open_storage(str(out))
    _plant_foreign(st)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    cfg = load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                   "pipeline.report=false", "metrics.fid=false"])
    s = run_batch(str(prompts), cfg, str(out), progress=False)
    assert s.done == 2 and manifest.counts(manifest.read(st))["done"] == 2
    assert st.ls(manifest.QUARANTINE_DIR) == sorted(FOREIGN) and st.ls(manifest.PARTS_DIR) == []
    assert "int-id.parquet is not a sctd3d manifest record (asset_id is int64" in caplog.text
