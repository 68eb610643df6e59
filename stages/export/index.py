"""The dataset index: one Parquet file, one row per exported asset, plain column types.

Why plain types and relative paths: `datasets.load_dataset("parquet", ...)`, pandas and duckdb
must read it as is, and the dataset must stay valid when its folder is copied or uploaded, so every
path is relative to the dataset root.
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from common.manifest import METRIC_COLUMNS

INDEX_FILE = "index.parquet"
METRICS = METRIC_COLUMNS  # the manifest's per-asset metric columns (one list)

SCHEMA = pa.schema([
    ("asset_id", pa.string()),
    ("prompt", pa.string()),
    ("seed", pa.int64()),
    ("method", pa.string()),
    ("prior", pa.string()),
    ("config_hash", pa.string()),
    ("code_version", pa.string()),
    ("status", pa.string()),
    *[(m, pa.float64()) for m in METRICS],
    ("num_gaussians", pa.int64()),
    ("num_views", pa.int32()),
    ("num_random_views", pa.int32()),
    ("asset_dir", pa.string()),
    ("transforms_path", pa.string()),
    ("preview_path", pa.string()),
    ("shard", pa.string()),
    ("ply_sha256", pa.string()),
])


def schema(format_columns: Sequence[str] = ()) -> pa.Schema:
    """SCHEMA plus the path columns of the exported formats (e.g. ply_path, spz_path: each
    format of stages.export.formats names its own), after asset_dir."""
    at = SCHEMA.get_field_index("asset_dir") + 1
    s = SCHEMA
    for k, col in enumerate(format_columns):
        s = s.insert(at + k, pa.field(col, pa.string()))
    return s


def index_table(rows: Iterable[dict[str, Any]], format_columns: Sequence[str] = ()) -> pa.Table:
    """Rows (dicts with the schema's keys; missing keys are null) sorted by asset_id."""
    sch = schema(format_columns)
    rows = sorted(rows, key=lambda r: r["asset_id"])
    return pa.Table.from_pylist([{n: r.get(n) for n in sch.names} for r in rows], schema=sch)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
