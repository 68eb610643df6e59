"""pipeline.manifest: explicit v1 schema, atomic per-asset parts, dedup, compaction, show."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import manifest
from pipeline.storage import open_storage

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
    assert manifest.SCHEMA.metadata[b"sctd3d.manifest.schema_version"] == b"1"


def test_make_record_validates():
    r = manifest.make_record(asset_id="ab12", status="done", prompt="p")
    assert r["schema_version"] == 1 and r["clip_l"] is None and set(r) == set(manifest.COLUMNS)
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


def test_corrupt_part_is_a_clear_error(tmp_path):
    st = open_storage(str(tmp_path))
    st.write_bytes("manifest/parts/dd04.parquet", b"PAR1 truncated")
    with pytest.raises(manifest.ManifestError, match="dd04.parquet"):
        manifest.read(st)


def _pq_bytes(table):
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
