"""common.storage: atomic writes, root confinement, asset layout, memory:// object store."""

import os
import uuid
from pathlib import Path

import pytest

from common.storage import StorageError, asset_dir, join_uri, open_storage, safe_relpath


def test_safe_relpath_rejects_escapes():
    assert safe_relpath("a", "b/c", "./d") == "a/b/c/d"
    for bad in ["../x", "a/../../etc/passwd", "/etc/passwd", "C:/x", "a\\b", "s3://other/x", "a\x00b"]:
        with pytest.raises(StorageError):
            safe_relpath(bad)


def test_asset_dir_layout_and_ids():
    aid = "abcdef0123456789abcd"
    assert asset_dir("s3://b/run", aid) == f"s3://b/run/assets/ab/{aid}"
    assert asset_dir("/tmp/out/", aid) == f"/tmp/out/assets/ab/{aid}"
    for bad in ["../../etc", "a red cube", "ABCDEF12", ""]:
        with pytest.raises(StorageError, match="hex"):
            asset_dir("/tmp/out", bad)
    with pytest.raises(StorageError):
        join_uri("/tmp/out", "..")


def test_local_atomic_write_and_listing(tmp_path):
    st = open_storage(str(tmp_path / "out"))
    uri = st.write_text("manifest/parts/x.parquet", "hello")
    assert uri == str(tmp_path / "out" / "manifest/parts/x.parquet")
    assert st.read_text("manifest/parts/x.parquet") == "hello"
    st.write_text("manifest/parts/x.parquet", "again")  # overwrite atomically
    assert st.read_text("manifest/parts/x.parquet") == "again"
    assert st.ls("manifest/parts") == ["x.parquet"]
    assert st.orphan_temp_files() == []
    assert st.ls("nope") == []
    with pytest.raises(StorageError):
        st.write_text("../escape.txt", "x")
    assert not (tmp_path / "escape.txt").exists()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    st = open_storage(str(tmp_path))
    st.write_text("a.txt", "old")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        st.write_text("a.txt", "new content")
    assert st.read_text("a.txt") == "old"
    assert st.orphan_temp_files() == []


@pytest.mark.parametrize("where", ["local", "memory"])
def test_streamed_write_is_atomic_and_a_failed_one_leaves_the_old_file(tmp_path, where):
    """write_stream (dataset shards): what the callback writes lands whole, or not at all."""
    root = str(tmp_path) if where == "local" else f"memory://bucket-{uuid.uuid4().hex[:8]}/run"
    st = open_storage(root)
    st.write_stream("d/shard.tar", lambda f: (f.write(b"abc"), f.write(b"def")))
    assert st.read_bytes("d/shard.tar") == b"abcdef"

    def half_then_fail(f):
        f.write(b"partial")
        raise RuntimeError("sample unreadable")

    with pytest.raises(RuntimeError, match="unreadable"):
        st.write_stream("d/shard.tar", half_then_fail)
    assert st.read_bytes("d/shard.tar") == b"abcdef"
    assert list(st.walk_files("d")) == ["d/shard.tar"] and st.orphan_temp_files() == []


def test_memory_object_store_roundtrip(tmp_path):
    root = f"memory://bucket-{uuid.uuid4().hex[:8]}/run"
    st = open_storage(root)
    assert not st.local
    st.write_bytes("assets/ab/abcdef01/asset.ply", b"ply")
    assert st.exists("assets/ab/abcdef01/asset.ply")
    assert list(st.walk_files("assets")) == ["assets/ab/abcdef01/asset.ply"]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.bin").write_bytes(b"123")
    uris = st.put_dir(str(src), "assets/ab/abcdef01")
    assert uris == [f"{root}/assets/ab/abcdef01/sub/f.bin"]
    dst = tmp_path / "dst"
    assert st.get_dir("assets/ab/abcdef01", str(dst)) == 2
    assert (dst / "sub" / "f.bin").read_bytes() == b"123"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    """Atomic writes used tempfile.mkstemp (always 0600): a shared dataset folder's manifest,
    run.json and frames were unreadable to its other users (issue 14 item 3)."""
    from common import manifest
    from stages.report.build import _write_bytes as report_write

    old = os.umask(umask)
    try:
        st = open_storage(str(tmp_path / "run"))
        st.write_text("run.json", "{}")
        st.write_bytes("assets/ab/abcdef01/frames/000.png", b"png")
        manifest.commit(st, {"asset_id": "abcdef01", "status": "done"})
        manifest.compact(st)
        report_write(str(tmp_path / "run" / "report" / "report.html"), b"<html>")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) == 4  # run.json, the frame, manifest.parquet, report.html
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


def test_atomic_path_is_the_one_local_atomic_write(tmp_path):
    """The stages' local writes (meta.json, asset.ply, checkpoints, caches, the report) go through
    common.storage.atomic_path: the umask is respected, a failed write leaves the old file and no
    temp file, and the temp name is one readers and the clean-up treat as in progress."""
    from common.storage import atomic_path, is_temp_name

    target = tmp_path / "sub" / "meta.json"
    old = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            assert is_temp_name(os.path.basename(tmp)) and os.path.dirname(tmp) == str(target.parent)
            assert not list(target.parent.glob("*.json"))  # an extension glob never sees the write
            Path(tmp).write_text("v1")
            assert not target.exists()  # nothing visible before the block ends
    finally:
        os.umask(old)
    assert target.read_text() == "v1" and (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "v1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["meta.json"]


def test_the_asset_folder_layout_has_one_home():
    """`assets/<id[:2]>/<id>` is built by common.storage.asset_relpath / asset_dir only: no other
    production module spells the layout out (a change to it is one edit, and every reader and
    writer agrees). pipeline/asset.py is another helper's file this change did not edit (issue 25)."""
    import re

    from common.storage import asset_relpath

    aid = "abcdef0123456789abcd"
    assert asset_relpath(aid) == f"assets/ab/{aid}" and asset_dir("/o", aid) == f"/o/{asset_relpath(aid)}"
    with pytest.raises(StorageError, match="hex"):
        asset_relpath("../../etc")
    root = Path(__file__).resolve().parents[1]
    built = re.compile(r"""assets/\{|\b(asset_id|aid|a)\b["'\]]*\)?\[:2\]""")  # f"assets/{..}", id[:2]
    home = root / "common" / "storage.py"
    found = [f"{p.relative_to(root)}:{i}: {line.strip()}"
             for pkg in ("common", "kernels", "stages", "pipeline") for p in sorted((root / pkg).rglob("*.py"))
             if p != home
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if built.search(line.split("#", 1)[0]) and not line.lstrip().startswith(('"', "'"))]
    assert not found, "the asset folder layout rebuilt outside common.storage:\n" + "\n".join(found)
