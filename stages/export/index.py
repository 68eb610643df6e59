"""The dataset index: one Parquet file, one row per exported asset, plain column types plus one
image column.

Why plain types and relative paths: `datasets.load_dataset("parquet", ...)`, pandas and duckdb
must read it as is, and the dataset must stay valid when its folder is copied or uploaded, so every
path is relative to the dataset root. Why one image column: the Hub's dataset viewer and
`datasets` show a column as pictures only when it is an `Image` feature, so `preview` holds each
asset's preview PNG (view 0, at most PREVIEW_PX wide, RGBA) as `{bytes, path}` with the
`datasets` feature metadata in the Parquet schema (written by `datasets` itself).
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


PREVIEW_PX = 256
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def schema(format_columns: Sequence[str] = (),
           stat_columns: dict[str, str] | None = None) -> pa.Schema:
    """SCHEMA plus the path columns of the exported formats (e.g. ply_path, spz_path: each
    format of stages.export.formats names its own), after asset_dir, and the formats' numbers
    (`stat_columns` {column: arrow type name}, e.g. the mesh's faces) at the end."""
    at = SCHEMA.get_field_index("asset_dir") + 1
    s = SCHEMA
    for k, col in enumerate(format_columns):
        s = s.insert(at + k, pa.field(col, pa.string()))
    for col, typ in (stat_columns or {}).items():
        s = s.append(pa.field(col, pa.bool_() if typ == "bool" else getattr(pa, typ)()))
    return s.insert(1, pa.field("preview", IMAGE_TYPE))


def index_table(rows: Iterable[dict[str, Any]], format_columns: Sequence[str] = (),
                previews: dict[str, bytes] | None = None,
                stat_columns: dict[str, str] | None = None) -> pa.Table:
    """Rows (dicts with the schema's keys; missing keys are null) sorted by asset_id;
    `previews` = {asset_id: PNG bytes} for the image column."""
    from datasets import Features, Image

    sch = schema(format_columns, stat_columns)
    rows = sorted(rows, key=lambda r: r["asset_id"])
    previews = previews or {}
    data = []
    for r in rows:
        d = {n: r.get(n) for n in sch.names}
        png = previews.get(r["asset_id"])
        d["preview"] = {"bytes": png, "path": r.get("preview_path")} if png else None
        data.append(d)
    features = Features.from_arrow_schema(sch)
    features["preview"] = Image()
    return pa.Table.from_pylist(data, schema=features.arrow_schema)


def preview_png(rgba_png: bytes, px: int = PREVIEW_PX) -> bytes:
    """A preview (at most `px` on a side, RGBA PNG) of a view."""
    import io as _io

    from PIL import Image as PILImage

    im = PILImage.open(_io.BytesIO(rgba_png)).convert("RGBA")
    if max(im.size) > px:
        im = im.resize((px, px * im.size[1] // im.size[0]), PILImage.BILINEAR)
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
