"""The comparison behind the report's decision: paired differences, movers, trends."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from stages import regression
from stages.report.data import PER_ASSET_METRICS, ReportError, RunData

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


def _nonneg_numbers(mapping: dict, key: str) -> dict[str, float]:
    """metric -> float from a report mapping; a value that is not a finite number >= 0 is one line."""
    out = {}
    for k, v in mapping.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ReportError(f"report.{key}.{k}: expected a number >= 0, got {v!r}")
        out[str(k)] = float(v)
    return out


def _check_thresholds(rcfg) -> dict[str, float]:
    return _nonneg_numbers(rcfg.thresholds, "thresholds")


def spreads(rcfg) -> dict[str, float]:
    """report.spreads (metric -> measured run-to-run SD of the mean paired difference)."""
    return _nonneg_numbers(rcfg.spreads, "spreads")


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
