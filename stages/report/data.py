"""Reading runs for the report: manifests (through common.manifest), run.json, FID, history.

A report input is a run directory, its `manifest/` directory, or a `.parquet` file, on any fsspec URI.
"""

from __future__ import annotations

from common.errors import UserError
import json
import logging
import math
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa

from common import manifest
from common.manifest import METRIC_COLUMNS
from common.storage import StorageError, join_uri, open_storage

log = logging.getLogger(__name__)

PER_ASSET_METRICS = METRIC_COLUMNS  # the one list (common.manifest)
KEY = ("prompt", "seed", "method")
STATUSES = ("done", "failed", "rejected")


class ReportError(UserError, ValueError):
    """Bad report input (missing manifest, unreadable file, bad option); the message says which."""


# ----------------------------------------------------------------------------------------------
# URIs
# ----------------------------------------------------------------------------------------------
def _fs(uri: str) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _protocol(fs: Any) -> str:
    p = fs.protocol
    return p[0] if isinstance(p, (tuple, list)) else p


def _uri(fs: Any, path: str) -> str:
    """Full URI for a path on fs (local paths stay plain paths)."""
    proto = _protocol(fs)
    if proto in ("file", "local"):
        return path
    return fs.unstrip_protocol(path)


# joins under a run root: common.storage.join_uri, the one join (refuses '..', absolute parts)


def resolve_ref(ref: str | None, root: str) -> str | None:
    """An asset/frames URI from the manifest: absolute as is, relative to the run root otherwise.
    A relative one that would leave the root ('..', a backslash) is not followed: None, with a
    warning naming it (the row shows no asset; the rest of the report is built)."""
    if ref is None or (isinstance(ref, float) and math.isnan(ref)) or str(ref).strip() == "":
        return None
    ref = str(ref)
    if "://" in ref or os.path.isabs(ref):
        return ref
    try:
        return join_uri(root, ref)
    except StorageError as e:
        log.warning("report: manifest reference not followed: %s", e)
        return None


# ----------------------------------------------------------------------------------------------
# Manifest reading (the one function to switch to common.manifest once its reader is final)
# ----------------------------------------------------------------------------------------------
def _manifest_files(uri: str) -> tuple[str, list[str]]:
    """(run root URI, parquet file URIs) for a run dir, a manifest dir, or a .parquet file."""
    fs, path = _fs(uri)
    path = path.rstrip("/") or path
    if path.endswith(".parquet"):
        if not fs.exists(path):
            raise ReportError(f"manifest file not found: {uri}")
        parent = posixpath.dirname(path)
        if posixpath.basename(parent) == "parts":
            parent = posixpath.dirname(parent)
        root = posixpath.dirname(parent) if posixpath.basename(parent) == "manifest" else parent
        return _uri(fs, root), [_uri(fs, path)]
    if not fs.isdir(path):
        raise ReportError(f"manifest not found: {uri} is neither a .parquet file nor a directory "
                          f"(give a run directory, its manifest/ directory, or a .parquet file)")
    for mdir, root in ((posixpath.join(path, "manifest"), path), (path, posixpath.dirname(path))):
        files: list[str] = []
        compact = posixpath.join(mdir, "manifest.parquet")
        if fs.exists(compact):
            files.append(compact)
        parts = posixpath.join(mdir, "parts")
        if fs.isdir(parts):
            files += sorted(p for p in fs.ls(parts, detail=False) if str(p).endswith(".parquet"))
        if files:
            return _uri(fs, root), [_uri(fs, f) for f in files]
    loose = sorted(p for p in fs.ls(path, detail=False) if str(p).endswith(".parquet"))
    if loose:
        return _uri(fs, path), [_uri(fs, f) for f in loose]
    raise ReportError(f"no manifest under {uri}: expected manifest/manifest.parquet or "
                      f"manifest/parts/*.parquet (has the run committed any asset?)")


def read_manifest(uri: str) -> tuple[str, pd.DataFrame]:
    """(run root, one row per asset) from any manifest location. A run's manifest is read by the
    run's own reader (common.manifest.read: compacted file + parts, dedup, URIs resolved); a
    loose .parquet file or folder is read file by file and deduplicated by the same rule."""
    root, files = _manifest_files(uri)
    mdir = join_uri(root, "manifest")
    try:
        if all(f.startswith(mdir) for f in files):
            return root, manifest.read(open_storage(root)).to_pandas()
        tables = [manifest.parse_file(f, _read_bytes(f)) for f in files]
    except manifest.ManifestError as e:
        raise ReportError(f"cannot read manifest part: {e}") from None
    except OSError as e:
        raise ReportError(f"cannot read manifest {uri}: {e}") from None
    missing = [c for c in ("prompt", "seed", "method", "status") if c not in tables[0].column_names]
    if missing:
        raise ReportError(f"manifest {uri} lacks required columns {missing} "
                          f"(has {sorted(tables[0].column_names)}); is it a sctd3d manifest?")
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    if "asset_id" in table.column_names:
        table = manifest.dedup(manifest.conform(table))
    return root, table.to_pandas()


def _read_bytes(uri: str) -> bytes:
    fs, p = _fs(uri)
    with fs.open(p, "rb") as fh:
        return fh.read()


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------
def _to_utc(s: Any) -> pd.Series:
    return pd.to_datetime(s, utc=True, errors="coerce", format="mixed")


@dataclass
class RunData:
    uri: str
    root: str
    df: pd.DataFrame
    label: str = ""
    time: pd.Timestamp | None = None
    fid: float | None = None
    extra: dict = field(default_factory=dict)
    fid_info: dict = field(default_factory=dict)  # metrics/fid.json: image counts, KID and its SE

    def counts(self) -> dict[str, int]:
        vc = self.df["status"].astype(str).value_counts()
        out = {s: int(vc.get(s, 0)) for s in STATUSES}
        other = int(len(self.df) - sum(out.values()))
        if other:
            out["other"] = other
        out["total"] = int(len(self.df))
        return out

    def metrics(self) -> list[str]:
        return [m for m in PER_ASSET_METRICS if m in self.df.columns
                and pd.to_numeric(self.df[m], errors="coerce").notna().any()]

    def done(self) -> pd.DataFrame:
        return self.df[self.df["status"].astype(str) == "done"]

    def by_key(self) -> pd.DataFrame:
        """One row per (prompt, seed, method): a done record wins, then the latest finished."""
        df = self.df.copy()
        df["_done"] = (df["status"].astype(str) == "done").astype(int)
        df["_fin"] = _to_utc(df["finished_at"]) if "finished_at" in df.columns else pd.NaT
        df = df.sort_values(["_done", "_fin"], na_position="first")
        return df.drop_duplicates(list(KEY), keep="last").set_index(list(KEY))

    def summary(self) -> dict:
        df = self.df
        start = _to_utc(df["started_at"]).min() if "started_at" in df.columns else pd.NaT
        end = _to_utc(df["finished_at"]).max() if "finished_at" in df.columns else pd.NaT
        wall_sum = float(pd.to_numeric(df.get("wall_s"), errors="coerce").sum()) if "wall_s" in df else None
        gpu = float(pd.to_numeric(df.get("gpu_s"), errors="coerce").sum()) / 3600.0 if "gpu_s" in df else None
        span = (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else None
        uniq = lambda c: sorted(map(str, df[c].dropna().unique())) if c in df.columns else []  # noqa: E731
        return {"uri": self.uri, "label": self.label, "counts": self.counts(),
                "started_at": None if pd.isna(start) else start.isoformat(),
                "finished_at": None if pd.isna(end) else end.isoformat(),
                "wall_span_s": span, "asset_wall_s": wall_sum, "gpu_hours": gpu,
                "methods": uniq("method"), "devices": uniq("device"),
                # splat backend per asset: 'torch' on a GPU run is a gsplat fallback made visible
                "renderers": ({str(k): int(v) for k, v in df["renderer"].dropna().astype(str)
                               .value_counts().items()} if "renderer" in df.columns else {}),
                "code_versions": uniq("code_version"), "config_hashes": uniq("config_hash"),
                "generation_hashes": uniq("generation_hash"),
                "fid": self.fid, **{f"fid_{k}" if not k.startswith("kid") else k: v
                                    for k, v in self.fid_info.items()},
                "stopped": self.extra.get("stopped") or None}


def _read_json(uri: str) -> Any | None:
    fs, p = _fs(uri)
    if not fs.exists(p):
        return None
    try:
        with fs.open(p, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("ignoring unreadable %s: %s", uri, e)
        return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# what the report reads from metrics/fid.json besides the FID itself (set-level metrics and their n)
FID_INFO_KEYS = ("n_generated", "n_reference", "kid", "kid_se", "kid_n_images", "kid_n_assets",
                 "kid_n_reference", "kid_boot")


def _run_fid(root: str) -> tuple[float | None, dict]:
    """(FID, {n_generated, n_reference, kid, kid_se, ...}) from metrics/fid.json ({"fid": x, ...}
    or a bare number); (None, {}) when absent. Non-numeric values are dropped."""
    data = _read_json(join_uri(root, "metrics", "fid.json"))
    val = data.get("fid") if isinstance(data, dict) else data
    info = {k: _num(data.get(k)) for k in FID_INFO_KEYS} if isinstance(data, dict) else {}
    info = {k: (int(v) if k.startswith(("n_", "kid_n_", "kid_boot")) else v)
            for k, v in info.items() if v is not None}
    if _num(val) is not None:
        return float(val), info
    if data is not None and info.get("kid") is None:
        log.warning("metrics/fid.json under %s has no numeric 'fid'; FID not compared", root)
    return None, info


def load_run(uri: str) -> RunData:
    root, df = read_manifest(uri)
    run_json = _read_json(join_uri(root, "run.json")) or {}
    t = None
    for k in ("started_at", "started"):
        if isinstance(run_json, dict) and run_json.get(k):
            t = _to_utc(pd.Series([run_json[k]])).iloc[0]
            break
    if (t is None or pd.isna(t)) and "started_at" in df.columns:
        t = _to_utc(df["started_at"]).min()
    if t is not None and pd.isna(t):
        t = None
    base = posixpath.basename(root.rstrip("/")) or root
    label = base if t is None else f"{base} ({t.strftime('%Y-%m-%d %H:%M')})"
    # a run that stopped (run.json "failed"/"interrupted", e.g. no worker could start) says so
    stopped = ({k: run_json.get(k) for k in ("status", "error")}
               if isinstance(run_json, dict) and run_json.get("status") in ("failed", "interrupted")
               else {})
    fid, fid_info = _run_fid(root)
    extra = {"stopped": stopped} if stopped else {}
    if isinstance(run_json, dict):
        extra["run_json"] = run_json
    return RunData(uri=uri, root=root, df=df, label=label, time=t, fid=fid, extra=extra, fid_info=fid_info)


def _same(a: str, b: str) -> bool:
    norm = lambda u: os.path.realpath(u) if "://" not in u else u.rstrip("/")  # noqa: E731
    return norm(a) == norm(b)


def load_history(uri: str, exclude_root: str | None = None) -> list[RunData]:
    """Earlier runs under a directory (run dirs or .parquet manifests), oldest first."""
    fs, path = _fs(uri)
    if not fs.isdir(path):
        raise ReportError(f"--history {uri}: not a directory (give the folder holding earlier run "
                          f"directories or manifest .parquet files)")
    runs = []
    for entry in sorted(fs.ls(path, detail=False)):
        entry = str(entry)
        if fs.isdir(entry) or entry.endswith(".parquet"):
            try:
                run = load_run(_uri(fs, entry))
            except ReportError as e:
                log.info("history: skipping %s (%s)", entry, e)
                continue
            if exclude_root is not None and _same(run.root, exclude_root):
                continue
            runs.append(run)
    if not runs:  # the first night of a nightly job: no baseline yet, not an error
        log.info("--history %s: no earlier runs with a manifest yet (no baseline)", uri)
    far = pd.Timestamp.max.tz_localize("UTC")
    runs.sort(key=lambda r: (r.time if r.time is not None else far, r.label))
    return runs
