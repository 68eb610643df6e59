"""The run manifest: one Parquet record per asset, explicit versioned schema, exactly-once in effect.

Why this shape: each asset's record is its own part file `manifest/parts/<asset_id>.parquet`,
written atomically and only after the asset's artifacts are durable. So a crash leaves either no
record (the asset is redone) or a whole one (it is skipped), parallel writers never contend for one
file, and re-running the same command finishes the job. `compact` merges parts into
`manifest/manifest.parquet` (written atomically first, parts removed after, so a crash in between
only leaves duplicates that `read` drops).

Schema: add columns, never repurpose them; bump SCHEMA_VERSION when a column's meaning changes.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage import Storage, open_storage

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES = ("done", "failed", "rejected")
PARTS_DIR = "manifest/parts"
COMPACTED = "manifest/manifest.parquet"

# DESIGN.md schema v1, in order, then the pipeline's own additional columns.
SCHEMA = pa.schema([
    pa.field("asset_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("method", pa.string()),
    pa.field("prior", pa.string()),
    pa.field("config_hash", pa.string()),
    pa.field("code_version", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("started_at", pa.timestamp("ms", tz="UTC")),
    pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
    pa.field("wall_s", pa.float64()),
    pa.field("gpu_s", pa.float64()),
    pa.field("device", pa.string()),
    pa.field("num_gaussians", pa.int64()),
    pa.field("asset_uri", pa.string()),
    pa.field("frames_uri", pa.string()),
    pa.field("video_uri", pa.string()),
    pa.field("clip_l", pa.float64()),
    pa.field("image_reward", pa.float64()),
    pa.field("toy_psnr", pa.float64()),
    pa.field("toy_rprec", pa.float64()),
    pa.field("schema_version", pa.int32(), nullable=False),
    # --- additions (v1) ---
    pa.field("sheet_uri", pa.string()),
    pa.field("resumed_from_iter", pa.int64()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("slug", pa.string()),
    pa.field("input_line", pa.int64()),
    pa.field("worker", pa.string()),
], metadata={b"sctd3d.manifest.schema_version": str(SCHEMA_VERSION).encode()})

COLUMNS = tuple(SCHEMA.names)


class ManifestError(ValueError):
    """A record that does not fit the schema, or an unreadable manifest."""


def make_record(**fields: Any) -> dict:
    """A full record (every column present) from keyword fields; rejects unknown columns/statuses."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ManifestError(f"unknown manifest columns {sorted(unknown)}; the schema has {list(COLUMNS)}")
    rec = {name: None for name in COLUMNS}
    rec.update(fields)
    rec["schema_version"] = SCHEMA_VERSION
    if not rec.get("asset_id"):
        raise ManifestError(f"record without asset_id: {fields!r}")
    if rec.get("status") not in STATUSES:
        raise ManifestError(f"status {rec.get('status')!r} for {rec['asset_id']} is not one of {STATUSES}")
    return rec


def to_table(records: Iterable[dict]) -> pa.Table:
    recs = [make_record(**{k: v for k, v in r.items()}) for r in records]
    return pa.Table.from_pylist(recs, schema=SCHEMA)


def _to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _as_storage(where: Storage | str) -> Storage:
    return where if isinstance(where, Storage) else open_storage(where)


def part_path(asset_id: str) -> str:
    from pipeline.storage import safe_relpath

    return safe_relpath(PARTS_DIR, f"{asset_id}.parquet")


def commit(storage: Storage | str, record: dict) -> str:
    """Write one asset's record as its own part, atomically; call only after its artifacts exist."""
    st = _as_storage(storage)
    table = to_table([record])
    return st.write_bytes(part_path(record["asset_id"]), _to_parquet_bytes(table))


def commit_many(storage: Storage | str, records: list[dict], name: str) -> Optional[str]:
    """Several records in one part (used for a run's rejected rows); `name` is the part's stem."""
    if not records:
        return None
    st = _as_storage(storage)
    return st.write_bytes(f"{PARTS_DIR}/{name}.parquet", _to_parquet_bytes(to_table(records)))


def _conform(table: pa.Table) -> pa.Table:
    """Cast a stored table to the current schema: missing (newer) columns become nulls."""
    cols = []
    for f in SCHEMA:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col.cast(f.type) if col.type != f.type else col)
        else:
            cols.append(pa.nulls(table.num_rows, type=f.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def _read_file(st: Storage, rel: str) -> pa.Table:
    try:
        return _conform(pq.read_table(io.BytesIO(st.read_bytes(rel))))
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"unreadable manifest file {st.uri(rel)}: {e}; move it aside and re-run "
                            f"to regenerate its asset") from None


def _sources(st: Storage) -> list[str]:
    rels = [f"{PARTS_DIR}/{n}" for n in st.ls(PARTS_DIR) if n.endswith(".parquet")]
    if st.exists(COMPACTED):
        rels.insert(0, COMPACTED)
    return rels


STATUS_RANK = {"done": 0, "rejected": 1, "failed": 2}


def dedup(table: pa.Table) -> pa.Table:
    """One row per asset_id: a `done` record wins, then `rejected`, then the latest `failed`."""
    if table.num_rows == 0:
        return table
    rows = table.to_pylist()
    best: dict[str, dict] = {}
    for r in rows:
        cur = best.get(r["asset_id"])
        if cur is None:
            best[r["asset_id"]] = r
            continue
        key_new = (STATUS_RANK.get(r["status"], 9), -_ts(r["finished_at"]))
        key_cur = (STATUS_RANK.get(cur["status"], 9), -_ts(cur["finished_at"]))
        if key_new < key_cur:
            best[r["asset_id"]] = r
    ordered = sorted(best.values(), key=lambda r: r["asset_id"])
    return pa.Table.from_pylist(ordered, schema=SCHEMA)


def _ts(v: Any) -> float:
    return v.timestamp() if v is not None else 0.0


def read(where: Storage | str) -> pa.Table:
    """The manifest of a run (compacted file + parts), one row per asset, current schema."""
    st = _as_storage(where)
    tables = [_read_file(st, rel) for rel in _sources(st)]
    if not tables:
        return SCHEMA.empty_table()
    return dedup(pa.concat_tables(tables))


def records_by_id(where: Storage | str) -> dict[str, dict]:
    return {r["asset_id"]: r for r in read(where).to_pylist()}


def compact(where: Storage | str) -> str:
    """Merge parts into manifest/manifest.parquet (atomic), then remove the merged parts."""
    st = _as_storage(where)
    parts = [rel for rel in _sources(st) if rel != COMPACTED]
    tables = [_read_file(st, rel) for rel in _sources(st)]
    table = dedup(pa.concat_tables(tables)) if tables else SCHEMA.empty_table()
    uri = st.write_bytes(COMPACTED, _to_parquet_bytes(table))
    for rel in parts:
        st.rm(rel)
    log.info("compacted %d part(s) into %s (%d records)", len(parts), uri, table.num_rows)
    return uri


def counts(table: pa.Table) -> dict[str, int]:
    c = Counter(table.column("status").to_pylist()) if table.num_rows else Counter()
    return {s: int(c.get(s, 0)) for s in STATUSES}


def show(where: Storage | str) -> str:
    """Human summary: counts by status, methods, timings, failure reasons."""
    st = _as_storage(where)
    table = read(st)
    c = counts(table)
    lines = [f"manifest {st.uri('manifest')}: {table.num_rows} assets "
             f"(done {c['done']}, failed {c['failed']}, rejected {c['rejected']}); "
             f"{len(st.ls(PARTS_DIR))} part file(s), compacted: {'yes' if st.exists(COMPACTED) else 'no'}"]
    if table.num_rows:
        done = table.filter(pc.equal(table.column("status"), "done"))
        methods = Counter(m for m in done.column("method").to_pylist() if m)
        if methods:
            lines.append("methods: " + ", ".join(f"{m} {n}" for m, n in sorted(methods.items())))
        walls = [w for w in done.column("wall_s").to_pylist() if w is not None]
        if walls:
            lines.append(f"wall_s per done asset: mean {sum(walls) / len(walls):.1f}, "
                         f"max {max(walls):.1f}, total {sum(walls):.1f}")
        for metric in ("clip_l", "image_reward", "toy_psnr", "toy_rprec"):
            vals = [v for v in done.column(metric).to_pylist() if v is not None]
            if vals:
                lines.append(f"{metric}: mean {sum(vals) / len(vals):.4f} over {len(vals)}")
        bad = table.filter(pc.not_equal(table.column("status"), "done")).to_pylist()
        reasons = Counter(f"{r['status']}: {(r['error'] or '')[:100]}" for r in bad)
        for reason, n in reasons.most_common(10):
            lines.append(f"  {n} x {reason}")
    return "\n".join(lines)
