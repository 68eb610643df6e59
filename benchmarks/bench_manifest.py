"""Manifest read/compact cost at scale: 10k part files, and 100k records (compacted + 10k parts).

Why: a run reads its manifest at start (to skip committed assets) and FID, the report and
`manifest show` read it after; with one part file per asset, 10k parts took ~23 s per read. The run
now reads the parts once (one pyarrow dataset scan), compacts them, and later reads are one file.

    .venv/bin/python benchmarks/bench_manifest.py [--parts 10000] [--records 100000] [--dir DIR]

Prints one line per figure (seconds). Synthetic `done` records; parts are written with the
manifest's own encoder (without fsync, which is the run's cost, not the reader's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import manifest  # noqa: E402
from common.storage import open_storage  # noqa: E402


def _record(i: int, root: str) -> dict:
    aid = f"{i:020x}"
    return {"asset_id": aid, "status": "done", "prompt": f"prompt {i}", "seed": 0, "method": "sds",
            "prior": "toy_sd", "wall_s": 1.0 + i % 7, "clip_l": 0.2 + (i % 10) / 100, "toy_psnr": 15.0,
            "finished_at": dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i),
            "asset_uri": f"{root}/assets/{aid[:2]}/{aid}/asset.ply", "tags": ["bench"], "slug": "p"}


def write_parts(st, ids: range) -> None:
    parts = Path(st.path(manifest.PARTS_DIR))
    parts.mkdir(parents=True, exist_ok=True)
    for i in ids:
        rec = manifest.relativise(st, _record(i, st.root))
        (parts / f"{rec['asset_id']}.parquet").write_bytes(
            manifest._to_parquet_bytes(manifest.to_table([rec])))


def timed(label: str, fn, n_records: int | None = None):
    t = time.perf_counter()
    out = fn()
    dt_s = time.perf_counter() - t
    print(f"{label:58s} {dt_s:8.2f} s" + (f"  ({n_records} records)" if n_records is not None else ""),
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=10_000)
    ap.add_argument("--records", type=int, default=100_000, help="total for the large case (0 = skip)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed)")
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="bench-manifest-"))
    try:
        st = open_storage(str(work / "run10k"))
        timed(f"write {a.parts} synthetic part files", lambda: write_parts(st, range(a.parts)))
        t = timed(f"manifest.read, {a.parts} parts (one dataset scan)", lambda: manifest.read(st))
        assert t.num_rows == a.parts
        timed(f"manifest.show, {a.parts} parts", lambda: manifest.show(st))
        from stages.report import read_manifest

        timed(f"stages.report.read_manifest, {a.parts} parts", lambda: read_manifest(st.root))
        big = open_storage(str(work / "run100k"))
        if a.records:  # the same parts (their ids follow the compacted ones' range below)
            shutil.copytree(st.path(manifest.PARTS_DIR), big.path(manifest.PARTS_DIR))
        timed(f"manifest.compact_locked, {a.parts} parts", lambda: manifest.compact_locked(st))
        t = timed("manifest.read, compacted (1 file)", lambda: manifest.read(st), a.parts)
        timed("manifest.show, compacted", lambda: manifest.show(st))
        timed("stages.report.read_manifest, compacted", lambda: read_manifest(st.root))
        if a.records:
            n_old = a.records - a.parts
            table = manifest.to_table([manifest.relativise(big, _record(i, big.root))
                                       for i in range(a.parts, a.records)])
            big.write_bytes(manifest.COMPACTED, manifest._to_parquet_bytes(table))
            t = timed(f"manifest.read, {n_old} compacted + {a.parts} parts",
                      lambda: manifest.read(big), a.records)
            assert t.num_rows == a.records
            timed(f"manifest.compact_locked -> {a.records} records", lambda: manifest.compact_locked(big))
            t = timed(f"manifest.read, {a.records} compacted (1 file)", lambda: manifest.read(big))
            assert t.num_rows == a.records
            timed(f"manifest.dedup of {a.records} rows", lambda: manifest.dedup(t))
            timed(f"manifest.show, {a.records} compacted", lambda: manifest.show(big))
    finally:
        if a.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {os.cpu_count()} CPU(s); {dt.date.today()}")


if __name__ == "__main__":
    main()
