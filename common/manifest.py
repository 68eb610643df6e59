"""The run manifest: one Parquet record per asset, explicit versioned schema, exactly-once in effect.

Why this shape: each asset's record is its own part file `manifest/parts/<asset_id>.parquet`,
written atomically and only after the asset's artifacts are durable. So a crash leaves either no
record (the asset is redone) or a whole one (it is skipped), parallel writers never contend for one
file, and re-running the same command finishes the job. `compact` merges parts into
`manifest/manifest.parquet` (written atomically first, parts removed after, so a crash in between
only leaves duplicates that `read` drops). `compact` holds the run lock and removes only parts whose
bytes it merged, so it can never delete a record a run wrote meanwhile; `read` re-lists when a part
vanishes under it (a compaction finished meanwhile), so a reader never misses a record.

Every part is validated against the schema before it counts (`foreign_reason`: only schema
columns of castable types; asset_id a non-empty string; status one of STATUSES; schema_version 1 to
SCHEMA_VERSION). A foreign or unreadable Parquet file in `manifest/parts` (copied there by hand, a
tool's output) is never counted: readers skip it with one warning line naming the file, and the
lock holders (`sctd3d run`, `manifest compact`) move it to `manifest/quarantine/` with one line.

Asset URIs under the run root are stored relative to it (`assets/ab/<id>/asset.ply`) and resolved
against the root the manifest is read from, so a moved or copied run folder keeps its links.

Schema: add columns, never repurpose them; bump SCHEMA_VERSION when a column's meaning changes.
"""

from __future__ import annotations

from common.errors import UserError
import hashlib
import io
import logging
import posixpath
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.storage import Storage, open_storage

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
STATUSES = ("done", "failed", "rejected")
PARTS_DIR = "manifest/parts"
COMPACTED = "manifest/manifest.parquet"
QUARANTINE_DIR = "manifest/quarantine"  # foreign files moved out of PARTS_DIR (never read)

# Schema v1 (the starting design), in order, then the pipeline's own additional columns.
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
    # input_uri: the prompt file a `rejected` record came from; a later run of the same file
    # replaces that file's rejects, so a row fixed in the input no longer shows as rejected
    pa.field("input_uri", pa.string()),
    # --- additions (v2): asset identity split from evaluation settings ---
    # generation_hash: what the asset id hashes besides prompt and seed (generation settings +
    # prior weights identity, common.config.generation_hash); eval_hash: the evaluation settings
    # its metrics were made with (null: not scored, or a v1 record); evaluated_at: when
    # `sctd3d evaluate` last re-scored it (null: scored by the run that generated it).
    # v1 records read with these null. config_hash keeps its v1 meaning (provenance: the whole
    # config less executors/report), now of the config that last wrote the record.
    pa.field("generation_hash", pa.string()),
    pa.field("eval_hash", pa.string()),
    pa.field("evaluated_at", pa.timestamp("ms", tz="UTC")),
    # renderer: the splat backend generation actually used ('gsplat' | 'torch'); a torch value on a
    # CUDA device is a gsplat fallback (its reason is in the worker's log). Null: an older record.
    pa.field("renderer", pa.string()),
], metadata={b"sctd3d.manifest.schema_version": str(SCHEMA_VERSION).encode()})

COLUMNS = tuple(SCHEMA.names)
# The per-asset metric columns: the one list of per-asset metric names (config validation,
# stages.metrics, the record, the report, the export index and `manifest show` read it here).
from common.metric_names import METRIC_COLUMNS  # noqa: E402  (defined without pyarrow: the config reads it)
URI_COLUMNS = ("asset_uri", "frames_uri", "video_uri", "sheet_uri")
READ_THREADS = 16  # part files read at once (I/O bound on object stores; parsing releases the GIL)
DATASET_MIN_FILES = 64  # from this many files on, one pyarrow dataset scan (C++ threads) reads them


class ManifestError(UserError, ValueError):
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
    from common.storage import safe_relpath

    return safe_relpath(PARTS_DIR, f"{asset_id}.parquet")


def relativise(st: Storage, record: dict) -> dict:
    """URIs under the run root become relative to it (a moved run folder keeps working)."""
    prefix = st.root.rstrip("/") + "/"
    out = dict(record)
    for c in URI_COLUMNS:
        v = out.get(c)
        if isinstance(v, str) and v.startswith(prefix):
            out[c] = v[len(prefix):]
    return out


def _resolve(st: Storage, table: pa.Table) -> pa.Table:
    """Relative URIs (neither '/'-rooted nor with a scheme) become URIs under the root read from."""
    prefix = st.root.rstrip("/") + "/"
    for c in URI_COLUMNS:
        col = table.column(c)
        if col.null_count == len(col):
            continue
        rel = pc.and_(pc.invert(pc.starts_with(col, "/")), pc.invert(pc.match_substring(col, "://")))
        table = table.set_column(table.schema.get_field_index(c), SCHEMA.field(c),
                                 pc.if_else(rel, pc.binary_join_element_wise(prefix, col, ""), col))
    return table


def commit(storage: Storage | str, record: dict) -> str:
    """Write one asset's record as its own part, atomically; call only after its artifacts exist."""
    st = _as_storage(storage)
    table = to_table([relativise(st, record)])
    return st.write_bytes(part_path(record["asset_id"]), _to_parquet_bytes(table))


def commit_many(storage: Storage | str, records: list[dict], name: str) -> Optional[str]:
    """Several records in one part (used for a run's rejected rows); `name` is the part's stem."""
    if not records:
        return None
    st = _as_storage(storage)
    table = to_table([relativise(st, r) for r in records])
    return st.write_bytes(f"{PARTS_DIR}/{name}.parquet", _to_parquet_bytes(table))


def conform(table: pa.Table) -> pa.Table:
    """Cast a stored table to the current schema: missing (newer) columns become nulls."""
    if table.schema.equals(SCHEMA, check_metadata=False):
        return table.replace_schema_metadata(SCHEMA.metadata)
    cols = []
    for f in SCHEMA:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col.cast(f.type) if col.type != f.type else col)
        else:
            cols.append(pa.nulls(table.num_rows, type=f.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


class _Vanished(Exception):
    """A listed manifest file was gone when read (a concurrent compaction removed it)."""


class _Foreign(Exception):
    """A file in manifest/parts that is not a manifest part of this schema: (rel, reason)."""

    def __init__(self, rel: str, reason: str) -> None:
        super().__init__(rel, reason)
        self.rel, self.reason = rel, reason


_REQUIRED = ("asset_id", "status", "schema_version")


def _type_reason(schema: pa.Schema, exact: bool) -> Optional[str]:
    """Why `schema` cannot be a manifest part's (columns and types only), or None."""
    names = schema.names
    extra = [n for n in names if n not in SCHEMA.names]
    if extra:
        return f"columns {extra[:5]} are not manifest columns"
    if len(set(names)) != len(names):
        return "a column appears twice"
    missing = [c for c in _REQUIRED if c not in names]
    if missing:
        return f"no {missing} column{'s' if len(missing) > 1 else ''}"
    t = schema.field("asset_id").type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return f"asset_id is {t}, not a string"
    if exact:
        bad = [n for n in names if schema.field(n).type != SCHEMA.field(n).type]
        if bad:
            return f"column {bad[0]!r} is {schema.field(bad[0]).type}, not {SCHEMA.field(bad[0]).type}"
    return None


def _value_reason(table: pa.Table) -> Optional[str]:
    """Why a table with manifest columns holds no manifest records, or None (vectorised)."""
    if table.num_rows == 0:
        return None
    aid, status, sv = (table.column(c) for c in _REQUIRED)
    if aid.null_count or pc.min(pc.utf8_length(aid)).as_py() == 0:
        return "an empty or null asset_id"
    ok = pc.is_in(status, value_set=pa.array(STATUSES, pa.string()))
    if status.null_count or not pc.all(ok).as_py():
        bad = pc.filter(status, pc.invert(pc.fill_null(ok, False))).to_pylist()[:1] or [None]
        return f"status {bad[0]!r} is not one of {list(STATUSES)}"
    if sv.null_count or not 1 <= pc.min(sv).as_py() <= pc.max(sv).as_py() <= SCHEMA_VERSION:
        return f"schema_version is not 1 to {SCHEMA_VERSION} (a newer sctd3d, or not ours)"
    for c in URI_COLUMNS:  # a relative URI is joined under the run (_resolve): never out of it
        if c not in table.column_names:
            continue
        col = table.column(c).cast(pa.string())
        if col.null_count == len(col):
            continue
        rel = pc.and_(pc.invert(pc.starts_with(col, "/")), pc.invert(pc.match_substring(col, "://")))
        bad = pc.and_(rel, pc.match_substring_regex(col, _ESCAPE))
        if pc.any(pc.fill_null(bad, False)).as_py():
            v = pc.filter(col, pc.fill_null(bad, False))[0].as_py()
            return f"{c} {v[:80]!r} leaves the run folder ('..', a backslash or NUL in a relative URI)"
    return None


_ESCAPE = r"(^|/)\.\.(/|$)|\\|\x00"


def foreign_reason(table: pa.Table) -> Optional[str]:
    """Why a stored table is not a manifest part of this schema (None: it is one). Columns must be
    manifest columns (missing newer ones are fine) of types that cast to the schema's."""
    why = _type_reason(table.schema, exact=False)
    if why:
        return why
    for name in table.column_names:
        want = SCHEMA.field(name).type
        if table.schema.field(name).type != want:
            try:
                table.column(name).cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                return f"column {name!r} is {table.schema.field(name).type}, not {want}"
    return _value_reason(table)


def _parse(st: Storage, rel: str, data: bytes) -> pa.Table:
    """A part's (or the compacted file's) table in the current schema. A part that is not one
    raises _Foreign; the compacted file, which only compaction writes, raises ManifestError."""
    try:
        table = pq.ParquetFile(io.BytesIO(data)).read()
        why = foreign_reason(table)
    except (pa.ArrowInvalid, OSError) as e:
        why = f"not a readable Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if why is None:
        return conform(table)
    if rel == COMPACTED:
        raise ManifestError(f"unreadable manifest file {st.uri(rel)}: {why}; move it aside and "
                            f"re-run to regenerate its assets") from None
    raise _Foreign(rel, why)


_WARNED: set[str] = set()


def _skip_foreign(st: Storage, f: _Foreign) -> None:
    """A reader's one line for a foreign part (once per file and process); it is not counted."""
    uri = st.uri(f.rel)
    if uri not in _WARNED:
        _WARNED.add(uri)
        log.warning("manifest part %s is not a sctd3d manifest record (%s); not counted (the next "
                    "`sctd3d run` or `sctd3d manifest compact` moves it to %s)", uri, f.reason,
                    st.uri(QUARANTINE_DIR))


def quarantine(st: Storage, f: _Foreign) -> str:
    """Move a foreign part out of manifest/parts (caller holds the run lock); one line."""
    name = posixpath.basename(f.rel)
    dest = f"{QUARANTINE_DIR}/{name}"
    if st.exists(dest):
        dest = f"{QUARANTINE_DIR}/{uuid.uuid4().hex[:8]}-{name}"
    st.makedirs(QUARANTINE_DIR)
    st.fs.mv(st.path(f.rel), st.path(dest))
    log.warning("manifest part %s is not a sctd3d manifest record (%s); moved it to %s (not "
                "counted)", st.uri(f.rel), f.reason, st.uri(dest))
    return dest


def _split(results: list) -> tuple[list[pa.Table], list[_Foreign]]:
    return ([r for r in results if not isinstance(r, _Foreign)],
            [r for r in results if isinstance(r, _Foreign)])


def parse_file(uri: str, data: bytes) -> pa.Table:
    """One Parquet file's table as stored (no conforming: a reader may check its columns first);
    `ManifestError` naming `uri` when it is not Parquet."""
    try:
        return pq.ParquetFile(io.BytesIO(data)).read()
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"unreadable manifest file {uri}: {e}") from None


def _fetch(st: Storage, rel: str) -> bytes:
    try:
        return st.read_bytes(rel)
    except FileNotFoundError:
        raise _Vanished(st.uri(rel)) from None


def _read_file(st: Storage, rel: str) -> "pa.Table | _Foreign":
    try:
        return _parse(st, rel, _fetch(st, rel))
    except _Foreign as f:
        return f


def _pmap(fn, items: list) -> list:
    """`fn` over `items` on a small thread pool (many small part files: latency, not CPU, bound)."""
    if len(items) < 8:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def _sources(st: Storage) -> list[str]:
    rels = [f"{PARTS_DIR}/{n}" for n in st.ls(PARTS_DIR) if n.endswith(".parquet")]
    if st.exists(COMPACTED):
        rels.insert(0, COMPACTED)
    return rels


STATUS_RANK = {"done": 0, "rejected": 1, "failed": 2}


def dedup(table: pa.Table) -> pa.Table:
    """One row per asset_id, sorted by id: a `done` record wins, then `rejected`, then the latest
    `failed`; on a tie the later row (a part read after the compacted file) wins. Vectorised:
    100k records in well under a second."""
    if table.num_rows == 0:
        return table
    ranks = pa.array(list(STATUS_RANK), pa.string())
    rank = pc.fill_null(pc.index_in(table.column("status"), value_set=ranks), len(STATUS_RANK))
    fin = pc.fill_null(table.column("finished_at").cast(pa.int64()), 0)
    keys = pa.table({"id": table.column("asset_id"), "rank": rank, "fin": fin,
                     "pos": pa.array(range(table.num_rows), pa.int64())})
    order = pc.sort_indices(keys, sort_keys=[("id", "ascending"), ("rank", "ascending"),
                                             ("fin", "descending"), ("pos", "descending")])
    ids = pc.take(table.column("asset_id"), order).combine_chunks()
    first = pa.concat_arrays([pa.array([True]), pc.not_equal(ids[1:], ids[:-1])]) \
        if len(ids) > 1 else pa.array([True])
    return table.take(pc.filter(order, first)).combine_chunks()


def _scan(st: Storage, rels: list[str]) -> Optional[pa.Table]:
    """Many files in one pyarrow dataset scan with the current schema (missing columns -> nulls);
    None when the scan fails (a vanished or odd file): the per-file path then names the problem."""
    import pyarrow.dataset as ds

    try:
        fs = None
        if not st.local:
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            fs = PyFileSystem(FSSpecHandler(st.fs))
        dataset = ds.dataset([st.path(rel) for rel in rels], schema=SCHEMA, format="parquet",
                             filesystem=fs)
        table = dataset.to_table()
        # every file a manifest part (footers are cached by the scan); else the per-file path
        # names each foreign one
        why = next((w for w in (_type_reason(fr.physical_schema, exact=True)
                                for fr in dataset.get_fragments()) if w), None) \
            or _value_reason(table)
    except (pa.ArrowException, OSError, ValueError) as e:
        log.debug("manifest dataset scan failed (%s); reading file by file", e)
        return None
    if why:
        log.debug("manifest dataset scan found a foreign file (%s); reading file by file", why)
        return None
    return table


def _read_raw(st: Storage) -> pa.Table:
    """Compacted file + parts, deduplicated, URIs as stored; re-lists if a file vanishes mid-read."""
    for _ in range(5):
        rels = _sources(st)
        scanned = _scan(st, rels) if len(rels) >= DATASET_MIN_FILES else None
        if scanned is not None:
            return dedup(scanned)
        try:
            tables, foreign = _split(_pmap(lambda rel: _read_file(st, rel), rels))
        except _Vanished as e:
            log.info("manifest file %s vanished while reading (a compaction finished); re-reading", e)
            continue
        for f in foreign:
            _skip_foreign(st, f)
        return dedup(pa.concat_tables(tables)) if tables else SCHEMA.empty_table()
    raise ManifestError(f"manifest under {st.uri('manifest')} kept changing while it was read "
                        f"(5 tries); re-run the command")


def read(where: Storage | str) -> pa.Table:
    """The manifest of a run (compacted file + parts), one row per asset, current schema, asset
    URIs resolved against the root it is read from."""
    st = _as_storage(where)
    return _resolve(st, _read_raw(st))


def records_by_id(where: Storage | str) -> dict[str, dict]:
    return {r["asset_id"]: r for r in read(where).to_pylist()}


def compact(where: Storage | str) -> str:
    """Merge parts into manifest/manifest.parquet under the run lock (refused while a run holds
    it: `LockHeld` naming the owner); see compact_locked."""
    from common.lock import RunLock

    st = _as_storage(where)
    lock = RunLock(st).acquire()
    try:
        return compact_locked(st)
    finally:
        lock.release()


def compact_locked(st: Storage, drop_ids: Iterable[str] = ()) -> str:
    """Merge parts into manifest/manifest.parquet (atomic), then remove each merged part only if
    its bytes are still the ones merged (a part rewritten meanwhile stays; `read` dedups it).
    `drop_ids`: records to leave out (superseded rejects). The caller holds the run lock."""
    return _compact(st, drop_ids)[0]


def read_compacting(st: Storage) -> pa.Table:
    """`read`, but parts are first merged into manifest.parquet: a run's start reads each part
    once, and every later read of the run (FID, report, counts) is one file. Caller holds the lock."""
    if not st.ls(PARTS_DIR):
        return read(st)
    return _resolve(st, _compact(st)[1])


def _compact(st: Storage, drop_ids: Iterable[str] = ()) -> tuple[str, pa.Table]:
    parts = [rel for rel in _sources(st) if rel != COMPACTED]

    def load(rel: str) -> Optional[bytes]:
        try:
            return st.read_bytes(rel)
        except FileNotFoundError:
            return None  # removed by someone else meanwhile: its records are in their compaction

    blobs = dict(zip(parts, _pmap(load, parts)))
    parts = [rel for rel in parts if blobs[rel] is not None]
    # the merged table: one scan for many parts (a part rewritten after its bytes were hashed
    # just stays, as its hash no longer matches), else parsed from the very bytes hashed
    scanned = _scan(st, parts) if len(parts) >= DATASET_MIN_FILES else None
    if scanned is not None:
        tables = [scanned]
    else:
        def parse(rel: str) -> "pa.Table | _Foreign":
            try:
                return _parse(st, rel, blobs[rel])
            except _Foreign as f:
                return f
        tables, foreign = _split(_pmap(parse, parts))
        for f in foreign:  # moved aside, never merged nor removed
            quarantine(st, f)
        parts = [rel for rel in parts if rel not in {f.rel for f in foreign}]
    if st.exists(COMPACTED):
        tables.insert(0, _parse(st, COMPACTED, _fetch(st, COMPACTED)))
    table = dedup(pa.concat_tables(tables)) if tables else SCHEMA.empty_table()
    drop = set(drop_ids)
    if drop:
        table = table.filter(pc.invert(pc.is_in(table.column("asset_id"),
                                                value_set=pa.array(sorted(drop), pa.string()))))
    uri = st.write_bytes(COMPACTED, _to_parquet_bytes(table))
    digests = {rel: hashlib.sha256(blobs[rel]).digest() for rel in parts}

    def remove_if_unchanged(rel: str) -> bool:
        now = load(rel)
        if now is None:
            return True
        if hashlib.sha256(now).digest() != digests[rel]:
            log.warning("manifest part %s changed during compaction; kept", st.uri(rel))
            return False
        st.rm(rel)
        return True

    removed = sum(_pmap(remove_if_unchanged, parts))
    log.info("compacted %d part(s) into %s (%d records)", removed, uri, table.num_rows)
    return uri, table


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
        for metric in METRIC_COLUMNS:
            vals = [v for v in done.column(metric).to_pylist() if v is not None]
            if vals:
                lines.append(f"{metric}: mean {sum(vals) / len(vals):.4f} over {len(vals)}")
        bad = table.filter(pc.not_equal(table.column("status"), "done")).to_pylist()
        reasons = Counter(f"{r['status']}: {(r['error'] or '')[:100]}" for r in bad)
        for reason, n in reasons.most_common(10):
            lines.append(f"  {n} x {reason}")
    return "\n".join(lines)
