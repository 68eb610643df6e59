"""`sctd3d export` never writes into the run it reads, `--where` is one sandboxed condition that
Ctrl-C can stop, and a narrower re-export leaves no folder the index does not list (issue 26,
items 1, 3, 6, 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import fsspec
import pytest

from cli_capture import run_cli
from common.uri_overlap import overlap
from export_fixtures import asset_id, make_run, snapshot as _snapshot

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", n_done=2, failed=False)


# ------------------------------------------------------------------ 1. --out overlapping the run
def test_out_overlapping_the_run_is_refused_however_spelled(run, tmp_path):
    before = _snapshot(run)
    (tmp_path / "link").symlink_to(run)
    spellings = [f"file://{run}", f"/{run}", str(tmp_path / "link"), f"{run}/./",
                 f"{run}/manifest/parts", str(tmp_path / "link" / "assets"), f"file://{tmp_path}",
                 str(tmp_path)]
    for out in spellings:
        code, stdout, err = run_cli("export", str(run), "--out", out, "--formats", "ply",
                                    "--views", "2", "--resolution", "16")
        assert code == 2, (out, stdout, err)
        assert err.count("\n") == 1 and "choose a dataset folder outside the run" in err, (out, err)
        assert "Traceback" not in err
    # the run through the symlink, into a folder inside it: the same refusal
    code, _, err = run_cli("export", str(tmp_path / "link"), "--out", f"{run}/dataset",
                           "--formats", "ply", "--views", "2", "--resolution", "16")
    assert code == 2 and "is inside the run folder" in err
    assert _snapshot(run) == before and not (run / "dataset").exists()


def test_object_store_prefixes_overlap_by_bucket_and_prefix(tmp_path):
    assert overlap("s3a://bkt//run/ds/", "s3://bkt/run") == "a inside b"
    assert overlap("gcs://bkt/run", "gs://bkt/run/") == "same"
    assert overlap("s3://bkt/run2", "s3://bkt/run") is None
    assert overlap("s3://other/run", "s3://bkt/run") is None
    assert overlap("s3://bkt", "s3://bkt/run") == "b inside a"
    # a real object store (fsspec's memory store): a run there, the dataset under its prefix
    src = make_run(tmp_path / "local", n_done=1, failed=False)
    fs = fsspec.filesystem("memory")
    for p in src.rglob("*"):
        if p.is_file():
            fs.pipe_file(f"/bkt/run/{p.relative_to(src).as_posix()}", p.read_bytes())
    code, _, err = run_cli("export", "memory://bkt/run", "--out", "memory://bkt//run/manifest/x",
                           "--formats", "ply", "--views", "2", "--resolution", "16")
    assert code == 2 and "is inside the run folder" in err and err.count("\n") == 1
    assert not fs.exists("/bkt/run/manifest/x")


# ------------------------------------------------------------------ 3, 11. --where
@pytest.mark.parametrize("where", [
    "1=1); SELECT 42; --",
    "1=1); COPY (SELECT 1) TO '.tmp/x.csv'; --",
    "1=1); ATTACH '.tmp/evil.duckdb'; --",
    "(SELECT count(*) FROM read_csv('.tmp/secret.csv')) > 0",
    "asset_id IN (SELECT * FROM read_text('.tmp/secret.csv'))",
    "1=1) UNION SELECT * FROM read_csv('.tmp/secret.csv') --",
    "E'\\'' ) ; -- '",
    "status = 'done' -- and more",
])
def test_where_accepts_one_condition_only_and_never_touches_files(run, tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)  # duckdb's default temp directory is ./.tmp
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.csv").write_text("a\n1\n")
    code, stdout, err = run_cli("export", str(run), "--out", str(tmp_path / "ds"), "--where", where,
                                "--formats", "ply", "--views", "2", "--resolution", "16")
    assert code == 2 and err.count("\n") == 1 and err.startswith("sctd3d export: error: --where")
    assert "Traceback" not in err and stdout == ""
    assert sorted(p.name for p in (tmp_path / ".tmp").iterdir()) == ["secret.csv"]
    assert not (tmp_path / "ds").exists()


def test_where_runs_with_a_private_temp_directory(run, tmp_path):
    from common import manifest
    from stages.export.select import select

    table = manifest.read(str(run))
    got = select(table, "current_setting('temp_directory') LIKE '%sctd3d-where-%' "
                        "AND current_setting('enable_external_access') = 'false' "
                        "AND current_setting('lock_configuration') = 'true'")
    assert got.num_rows == table.num_rows
    # subqueries over the manifest itself stay allowed
    got = select(table, "clip_l >= (SELECT max(clip_l) FROM manifest)")
    assert got.column("asset_id").to_pylist() == [asset_id(1)]


HEAVY = ("(SELECT count(*) FROM (SELECT unnest(range(1000000)) AS x FROM manifest) a, "
         "(SELECT unnest(range(1000000)) AS y FROM manifest) b WHERE hash(a.x + b.y) = 7) > 0")


def test_ctrl_c_stops_a_heavy_where_in_one_line(run, tmp_path):
    """The heavy filter takes hours; SIGINT once it is running must end the command at once."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "export", str(run), "--out",
                             str(tmp_path / "ds"), "--where", HEAVY, "--formats", "ply",
                             "--views", "2", "--resolution", "16"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "filtering" in line:
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        running.wait(120)  # the filter is running once it says so (bounded: never hangs)
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)  # at once: duckdb's interrupt, not the end of the query
        reader.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "sctd3d export: interrupted" and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------ 6. narrower re-export
def test_narrower_reexport_removes_unselected_asset_folders(tmp_path):
    run = make_run(tmp_path / "run", n_done=3, failed=False)
    ds = tmp_path / "ds"
    args = ["export", str(run), "--out", str(ds), "--formats", "ply", "--views", "2",
            "--resolution", "16", "--shard-size", "1"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert len(list((ds / "assets").glob("*/*"))) == 3
    code, out, err = run_cli(*args, "--where", f"asset_id = '{asset_id(1)}'")
    assert code == 0, err
    import pyarrow.parquet as pq

    listed = pq.read_table(ds / "index.parquet").column("asset_id").to_pylist()
    folders = sorted(p.name for p in (ds / "assets").glob("*/*"))
    assert listed == folders == [asset_id(1)]
    assert sorted(p.name for p in (ds / "shards").iterdir()) == ["shard-00000.tar"]
    assert not [p for p in ds.rglob("*") if p.name.startswith(".tmp-")]  # nothing half-removed
    assert "2 asset folder(s) of an earlier export no longer selected" in out
    assert json.loads((ds / "export.json").read_text())["where"] == f"asset_id = '{asset_id(1)}'"


def test_the_parser_check_alone_refuses_what_the_tokenizer_check_would():
    """Defence in depth: duckdb's parser sees exactly the wrapped filter, whatever the tokenizer
    check let through (each query below is what a filter escaping its parentheses would make)."""
    import duckdb

    from stages.export.select import _WRAP, _check_shape

    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE manifest AS SELECT 'a' AS asset_id, 0.3 AS clip_l")
    assert _check_shape(con, _WRAP.format("clip_l > 0.2")) == ""
    for query in [_WRAP.format("1=1") + "; SELECT 42",
                  _WRAP.format("1=1") + " UNION SELECT 'x'",
                  _WRAP.format("1=1") + " ORDER BY 1 LIMIT 1",
                  _WRAP.format("1=1") + " GROUP BY asset_id",
                  "WITH t AS (SELECT 1) " + _WRAP.format("1=1"),
                  _WRAP.format("(SELECT count(*) FROM read_csv('x.csv')) > 0"),
                  _WRAP.format("asset_id IN (SELECT * FROM glob('*'))")]:
        assert _check_shape(con, query), query
    con.close()
