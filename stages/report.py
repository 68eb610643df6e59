"""`sctd3d report`: one self-contained HTML page + summary.json + an exit code for nightly alerts.

Inputs are manifests (a run directory, its `manifest/` directory, or a `.parquet` file, on any
fsspec URI). The regression decision (stages/regression.py) pairs the run with a baseline on
assets both share (key: prompt, seed, method) so prompt difficulty cancels out. With `--history`
and no `--baseline`, the newest earlier run of the history is the baseline, so a nightly job
needs only `--history runs/`.

Exit codes: 0 no metric regressed, 1 at least one regressed (summary.json says which).
Bad inputs raise `ReportError` (the CLI prints it and exits 2).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import posixpath
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import fsspec
import numpy as np
import pandas as pd

from common.manifest import METRIC_COLUMNS, STATUS_RANK
import pyarrow as pa
import pyarrow.parquet as pq

from stages import regression

log = logging.getLogger(__name__)

PER_ASSET_METRICS = METRIC_COLUMNS  # the one list (common.manifest)
KEY = ("prompt", "seed", "method")
STATUSES = ("done", "failed", "rejected")
SUMMARY_SCHEMA_VERSION = 1


class ReportError(ValueError):
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


def join_uri(base: str, *parts: str) -> str:
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def resolve_ref(ref: str | None, root: str) -> str | None:
    """An asset/frames URI from the manifest: absolute as is, relative to the run root otherwise."""
    if ref is None or (isinstance(ref, float) and math.isnan(ref)) or str(ref).strip() == "":
        return None
    ref = str(ref)
    if "://" in ref or os.path.isabs(ref):
        return ref
    return join_uri(root, ref)


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
    """(run root, one row per asset) from any manifest location; later parts win on asset_id."""
    root, files = _manifest_files(uri)
    tables = []
    for f in files:
        fs, p = _fs(f)
        try:
            with fs.open(p, "rb") as fh:
                tables.append(pq.read_table(fh))
        except (pa.ArrowInvalid, OSError) as e:
            raise ReportError(f"cannot read manifest part {f}: {e} (is it a Parquet file written "
                              f"by `sctd3d run`?)") from None
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    df = table.to_pandas()
    missing = [c for c in ("prompt", "seed", "method", "status") if c not in df.columns]
    if missing:
        raise ReportError(f"manifest {uri} lacks required columns {missing} "
                          f"(has {sorted(df.columns)}); is it a sctd3d manifest?")
    if "asset_id" in df.columns:
        # the manifest's own rule (common.manifest.dedup): done wins, then rejected, then the
        # latest failed record
        rank = df["status"].map(STATUS_RANK).fillna(len(STATUS_RANK))
        order = pd.DataFrame({"rank": rank, "pos": range(len(df))})
        if "finished_at" in df.columns:
            order["fin"] = _to_utc(df["finished_at"]).fillna(pd.Timestamp(0, tz="UTC")).values
            order = order.sort_values(["rank", "fin", "pos"], ascending=[True, False, False])
        else:
            order = order.sort_values(["rank", "pos"], ascending=[True, False])
        df = df.iloc[order.index].drop_duplicates("asset_id", keep="first").sort_index()
    return root, df.reset_index(drop=True)


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
                "fid": self.fid, "stopped": self.extra.get("stopped") or None}


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


def _run_fid(root: str) -> float | None:
    """Run-level FID from metrics/fid.json ({"fid": x} or a bare number); None when absent."""
    data = _read_json(join_uri(root, "metrics", "fid.json"))
    val = data.get("fid") if isinstance(data, dict) else data
    if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val):
        return float(val)
    if data is not None:
        log.warning("metrics/fid.json under %s has no numeric 'fid'; FID not compared", root)
    return None


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
    return RunData(uri=uri, root=root, df=df, label=label, time=t, fid=_run_fid(root),
                   extra={"stopped": stopped} if stopped else {})


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


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------
def _report_cfg(cfg: Any):
    from common.config import Config, ReportConfig
    if cfg is None:
        return ReportConfig()
    if isinstance(cfg, Config):
        return cfg.report
    if isinstance(cfg, ReportConfig):
        return cfg
    raise ReportError(f"cfg must be a Config or ReportConfig, got {type(cfg).__name__}")


def _check_thresholds(rcfg) -> dict[str, float]:
    out = {}
    for k, v in rcfg.thresholds.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ReportError(f"report.thresholds.{k}: expected a number >= 0, got {v!r}")
        out[str(k)] = float(v)
    return out


def spreads(rcfg) -> dict[str, float]:
    """report.spreads (metric -> measured run-to-run SD of the mean paired difference)."""
    out = {}
    for k, v in rcfg.spreads.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ReportError(f"report.spreads.{k}: expected a number >= 0, got {v!r}")
        out[str(k)] = float(v)
    return out


def paired_frame(run: RunData, base: RunData) -> pd.DataFrame:
    """Assets (by prompt, seed, method) present in both runs, columns suffixed _run / _base."""
    r, b = run.by_key(), base.by_key()
    return pd.merge(r, b, how="inner", left_index=True, right_index=True, suffixes=("_run", "_base"))


def compare(run: RunData, base: RunData, rcfg) -> tuple[list[regression.MetricDecision], pd.DataFrame]:
    thresholds = _check_thresholds(rcfg)
    pairs = paired_frame(run, base)
    kw = dict(n_boot=rcfg.n_boot, confidence=rcfg.confidence, rule=rcfg.rule, min_pairs=rcfg.min_pairs)
    decisions = []
    base_metrics, run_metrics = set(base.metrics()), set(run.metrics())
    for i, m in enumerate(sorted(base_metrics | run_metrics, key=PER_ASSET_METRICS.index)):
        thr = thresholds.get(m)
        if m not in run_metrics:
            decisions.append(regression.MetricDecision(
                m, "higher", 0, None, None, None, None, None, thr, "missing", thr is not None,
                note="metric present in baseline, absent in this run (scorer broken or disabled?)"))
            continue
        if m not in base_metrics:
            decisions.append(regression.MetricDecision(
                m, "higher", 0, None, None, None, None, None, thr, "insufficient", False,
                note="metric absent in baseline"))
            continue
        ok = (pairs["status_run"].astype(str) == "done") & (pairs["status_base"].astype(str) == "done")
        sub = pairs[ok]
        rv = pd.to_numeric(sub[f"{m}_run"], errors="coerce").to_numpy(dtype=float)
        bv = pd.to_numeric(sub[f"{m}_base"], errors="coerce").to_numpy(dtype=float)
        decisions.append(regression.decide(m, rv, bv, threshold=thr, seed=rcfg.seed + i, **kw))
    if len(pairs):
        rd = (pairs["status_run"].astype(str) == "done").to_numpy(dtype=float)
        bd = (pairs["status_base"].astype(str) == "done").to_numpy(dtype=float)
        decisions.append(regression.decide("done_rate", rd, bd, threshold=thresholds.get("done_rate"),
                                           seed=rcfg.seed + 100, **kw))
    if run.fid is not None or base.fid is not None:
        decisions.append(regression.decide_point("fid", run.fid, base.fid, threshold=thresholds.get("fid")))
    return decisions, pairs


def top_movers(pairs: pd.DataFrame, metrics: Iterable[str], k: int) -> pd.DataFrame:
    """The k paired assets whose metrics moved most (largest |diff| in units of that metric's spread)."""
    if k <= 0 or pairs.empty:
        return pairs.iloc[0:0]
    done = pairs[(pairs["status_run"].astype(str) == "done") & (pairs["status_base"].astype(str) == "done")]
    score = pd.Series(0.0, index=done.index)
    moved_metric = pd.Series("", index=done.index)
    for m in metrics:
        if f"{m}_run" not in done or f"{m}_base" not in done:
            continue
        d = pd.to_numeric(done[f"{m}_run"], errors="coerce") - pd.to_numeric(done[f"{m}_base"], errors="coerce")
        scale = float(np.nanstd(d.to_numpy(dtype=float))) if d.notna().sum() > 1 else 0.0
        z = (d.abs() / scale) if scale > 0 else d.abs()
        z = z.fillna(0.0)
        better = z > score
        moved_metric[better] = m
        score = score.where(~better, z)
    out = done.assign(_move=score, _moved_metric=moved_metric)
    return out.sort_values("_move", ascending=False).head(k)


def lowest_scoring(run: RunData, k: int) -> pd.DataFrame:
    """Without a baseline: the k done assets with the lowest first metric (what to look at first)."""
    ms = run.metrics()
    done = run.done()
    if k <= 0 or done.empty or not ms:
        return done.iloc[0:0]
    m = ms[0]
    return done.assign(_v=pd.to_numeric(done[m], errors="coerce")).sort_values("_v").head(k)


def trend_table(runs: list[RunData]) -> list[dict]:
    """Per run and method: counts and mean/sem of each metric (oldest first)."""
    rows = []
    for i, r in enumerate(runs):
        s = r.summary()
        entry = {"index": i, "label": r.label, "uri": r.uri,
                 "time": None if r.time is None else r.time.isoformat(),
                 "counts": s["counts"], "gpu_hours": s["gpu_hours"], "fid": r.fid, "methods": {}}
        done = r.done()
        for method, g in done.groupby(done["method"].astype(str)):
            md = {}
            for m in r.metrics():
                v = pd.to_numeric(g[m], errors="coerce").dropna().to_numpy(dtype=float)
                if v.size:
                    md[m] = {"mean": float(v.mean()), "n": int(v.size),
                             "sem": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0}
            entry["methods"][method] = md
        tot = s["counts"]["total"]
        entry["done_rate"] = s["counts"]["done"] / tot if tot else None
        rows.append(entry)
    return rows


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def _write_bytes(uri: str, data: bytes) -> None:
    """Atomic on local disk (temp file + rename); object stores commit on close."""
    fs, path = _fs(uri)
    if _protocol(fs) in ("file", "local"):
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        from common.storage import create_temp

        fd, tmp = create_temp(d)  # 0666 & ~umask: reports are meant to be shared
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    with fs.open(path, "wb") as fh:
        fh.write(data)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, (pd.Timestamp, _dt.datetime)):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def build_report(manifest_uri: str, out: str, baseline: str | None = None,
                 history: str | None = None, cfg: Any = None) -> int:
    """Write `out` (HTML) and summary.json beside it; return 1 when a metric regressed, else 0."""
    from stages import report_html

    rcfg = _report_cfg(cfg)
    _check_thresholds(rcfg)
    if not str(out).endswith((".html", ".htm")):
        raise ReportError(f"--out {out!r}: expected an .html path (summary.json is written beside it)")
    run = load_run(manifest_uri)
    past = load_history(history, exclude_root=run.root) if history else []
    if run.time is not None:
        past = [r for r in past if r.time is None or r.time <= run.time]
    base = load_run(baseline) if baseline else (past[-1] if past else None)

    decisions: list[regression.MetricDecision] = []
    pairs = None
    if base is not None:
        decisions, pairs = compare(run, base, rcfg)
        movers = top_movers(pairs, run.metrics(), rcfg.top_movers)
    else:
        movers = lowest_scoring(run, rcfg.top_movers)
    regressed = [d.metric for d in decisions if d.regressed]
    trend = trend_table(past + [run]) if past else []

    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "run": run.summary(),
        "baseline": None if base is None else base.summary(),
        "regressed": bool(regressed),
        "regressed_metrics": regressed,
        "n_paired": 0 if pairs is None else int(len(pairs)),
        "metrics": {d.metric: d.to_json() for d in decisions},
        "decision": {"rule": rcfg.rule, "n_boot": rcfg.n_boot, "confidence": rcfg.confidence,
                     "seed": rcfg.seed, "min_pairs": rcfg.min_pairs,
                     "thresholds": _check_thresholds(rcfg),
                     # measured run-to-run spread each threshold was set from (display only)
                     "spreads": spreads(rcfg), "spread_source": rcfg.spread_source},
        "trend": trend,
        "report_html": posixpath.basename(str(out)),
    }
    page = report_html.render_page(run=run, base=base, past=past, decisions=decisions,
                                   pairs=pairs, movers=movers, summary=summary, rcfg=rcfg)
    _write_bytes(out, page.encode("utf-8"))
    out_dir = posixpath.dirname(out) if "://" in out else os.path.dirname(os.path.abspath(out))
    summary_uri = join_uri(out_dir, "summary.json")
    _write_bytes(summary_uri, json.dumps(_clean(summary), indent=2, default=_json_default).encode())
    log.info("report: %s, %s (%s)", out, summary_uri,
             "REGRESSED: " + ", ".join(regressed) if regressed else "no regression")
    return 1 if regressed else 0


# ----------------------------------------------------------------------------------------------
# CLI (pipeline/cli.py delegates `sctd3d report ...` here)
# ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest_uri", help="run directory, its manifest/ dir, or a .parquet file (any fsspec URI)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--baseline", help="manifest to compare against (same forms as MANIFEST_URI)")
    g.add_argument("--history", help="directory of earlier runs/manifests: trend plots; the newest "
                                     "earlier run is the baseline")
    p.add_argument("--out", required=True, help="report .html path/URI; summary.json goes beside it")
    p.add_argument("--config", default=None, help="config YAML whose `report` section to use")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="override, e.g. --set report.n_boot=5000")


def run_cli(args: argparse.Namespace) -> int:
    from common.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, args.overrides)
        code = build_report(args.manifest_uri, args.out, baseline=args.baseline,
                            history=args.history, cfg=cfg)
    except (ReportError, ConfigError) as e:
        print(f"sctd3d report: error: {e}", file=sys.stderr)
        return 2
    out_dir = posixpath.dirname(args.out) if "://" in args.out else os.path.dirname(os.path.abspath(args.out))
    written = _read_json(join_uri(out_dir, "summary.json")) or {}
    if args.history and written.get("baseline") is None:
        print(f"wrote {args.out} (no baseline yet: no earlier run under {args.history})")
    else:
        print(f"wrote {args.out} ({'REGRESSION' if code else 'no regression'})")
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sctd3d report", description=__doc__.splitlines()[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
