"""The comparison behind the report's decision: paired differences, movers, trends."""

from __future__ import annotations

import math
from statistics import NormalDist
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


# How two nights were paired (summary.json "pairing", shown on the page)
PAIRING = {
    "asset": "paired by asset (prompt, seed, method): bootstrap over shared assets of the per-asset difference",
    "prompt": "no shared assets (other seeds): paired by prompt, bootstrap over shared (prompt, method) "
              "of the difference of per-prompt means over seeds",
}


def _both_done(pairs: pd.DataFrame) -> pd.Series:
    return (pairs["status_run"].astype(str) == "done") & (pairs["status_base"].astype(str) == "done")


def prompt_frame(run: RunData, base: RunData) -> pd.DataFrame:
    """(prompt, method) shared by both runs: per-prompt means over seeds of each metric (done assets)
    and the done fraction, columns suffixed _run / _base; status_* is 'done' where any asset is."""
    def means(r: RunData) -> pd.DataFrame:
        df = r.df.copy()
        df["_done"] = (df["status"].astype(str) == "done").astype(float)
        key = [df["prompt"].astype(str).rename("prompt"), df["method"].astype(str).rename("method")]
        out = df.groupby(key)[["_done"]].mean().rename(columns={"_done": "done_rate"})
        done = df[df["_done"] > 0]
        ms = [m for m in r.metrics() if m in done]
        if ms:
            vals = done[ms].apply(pd.to_numeric, errors="coerce")
            out = out.join(vals.groupby([done["prompt"].astype(str).rename("prompt"),
                                         done["method"].astype(str).rename("method")]).mean(), how="left")
        out["status"] = np.where(out["done_rate"] > 0, "done", "failed")
        out["n_assets"] = df.groupby(key).size()
        # the first done asset of each prompt stands for it on the contact sheet
        cols = [c for c in ("asset_id", "seed", "asset_uri", "frames_uri", "video_uri", "sheet_uri") if c in done]
        if cols:
            out = out.join(done.groupby([done["prompt"].astype(str).rename("prompt"),
                                         done["method"].astype(str).rename("method")])[cols].first(), how="left")
        return out
    return pd.merge(means(run), means(base), how="inner", left_index=True, right_index=True,
                    suffixes=("_run", "_base"))


def pairing_rule(pairs: pd.DataFrame, rcfg) -> str:
    """'asset' when enough assets are shared (done in both), else 'prompt'."""
    return "asset" if int(_both_done(pairs).sum()) >= rcfg.min_pairs else "prompt"


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def decide_with_se(metric: str, run_v: float | None, run_se: float | None, base_v: float | None,
                   base_se: float | None, *, threshold: float | None, confidence: float, rule: str,
                   n_note: str) -> regression.MetricDecision:
    """A set-level metric with a measured standard error per night (KID): the difference and its
    normal CI (SEs of independent nights add in quadrature), decided by the same rules as
    regression.decide. Without an SE on either side: insufficient, never gated."""
    sgn = regression.direction(metric) if metric != "kid" else -1
    dname = "higher" if sgn > 0 else "lower"
    if run_v is None or base_v is None:
        return regression.MetricDecision(metric, dname, 0, run_v, base_v, None, None, None, threshold,
                                         "insufficient", False, method="se",
                                         note=f"{metric} missing in run or baseline ({n_note})")
    diff = float(run_v - base_v)
    if run_se is None or base_se is None:
        return regression.MetricDecision(metric, dname, 0, run_v, base_v, diff, None, None, threshold,
                                         "insufficient", False, method="se",
                                         note=f"no standard error (one asset?): not gated ({n_note})")
    se = math.hypot(run_se, base_se)
    lo, hi = diff - _z(confidence) * se, diff + _z(confidence) * se
    c_mean = sgn * diff
    c_lo, c_hi = (lo, hi) if sgn > 0 else (-hi, -lo)
    t = 0.0 if threshold is None else float(threshold)
    if rule == "ci_beyond_threshold":
        worse, better = c_hi < -t, c_lo > t
    else:
        worse, better = c_hi < 0 and c_mean < -t, c_lo > 0 and c_mean > t
    gated = threshold is not None
    status = ("regressed" if gated else "worse") if worse else ("improved" if better else "ok")
    return regression.MetricDecision(metric, dname, 0, run_v, base_v, diff, lo, hi, threshold, status,
                                     bool(worse and gated), method="se",
                                     note=f"± SE {se:.3g} (bootstrap over assets); {n_note}"
                                          + ("" if gated else "; no threshold: not gated"))


def _set_level(run: RunData, base: RunData, rcfg, thresholds: dict) -> list[regression.MetricDecision]:
    """KID decides (with its SE); FID is shown with its image counts, never gated (a point estimate)."""
    out = []
    ri, bi = run.fid_info, base.fid_info
    n_note = (f"n = {_n(ri.get('kid_n_images'))} images / {_n(ri.get('kid_n_assets'))} assets vs "
              f"{_n(bi.get('kid_n_images'))} / {_n(bi.get('kid_n_assets'))}")
    if ri.get("kid") is not None or bi.get("kid") is not None:
        out.append(decide_with_se("kid", ri.get("kid"), ri.get("kid_se"), bi.get("kid"), bi.get("kid_se"),
                                  threshold=thresholds.get("kid"), confidence=rcfg.confidence,
                                  rule=rcfg.rule, n_note=n_note))
    if run.fid is not None or base.fid is not None:
        d = regression.decide_point("fid", run.fid, base.fid, threshold=None)
        d.note = (f"point estimate from n = {_n(ri.get('n_generated'))} vs {_n(bi.get('n_generated'))} "
                  f"generated images (reference {_n(ri.get('n_reference'))}): biased upward at small n, "
                  f"no uncertainty, shown and never gated (KID decides)"
                  + ("; report.thresholds.fid is ignored" if "fid" in thresholds else ""))
        out.append(d)
    return out


def _n(v: Any) -> str:
    return "?" if v is None else str(int(v))


def compare(run: RunData, base: RunData, rcfg) -> tuple[list[regression.MetricDecision], pd.DataFrame]:
    """Per-metric decisions and the frame they were made on (its attrs["pairing"]: 'asset' or 'prompt')."""
    thresholds = _check_thresholds(rcfg)
    pairs = paired_frame(run, base)
    pairing = pairing_rule(pairs, rcfg)
    if pairing == "prompt":
        pairs = prompt_frame(run, base)
    pairs.attrs["pairing"] = pairing
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
        sub = pairs[_both_done(pairs)]
        rv = pd.to_numeric(sub[f"{m}_run"], errors="coerce").to_numpy(dtype=float)
        bv = pd.to_numeric(sub[f"{m}_base"], errors="coerce").to_numpy(dtype=float)
        d = regression.decide(m, rv, bv, threshold=thr, seed=rcfg.seed + i, **kw)
        if pairing == "prompt":
            d.method, d.note = "paired_bootstrap_by_prompt", ("; ".join(
                x for x in (f"{d.n} prompts, per-prompt means over seeds", d.note) if x))
        decisions.append(d)
    if len(pairs):
        if pairing == "asset":
            rd = (pairs["status_run"].astype(str) == "done").to_numpy(dtype=float)
            bd = (pairs["status_base"].astype(str) == "done").to_numpy(dtype=float)
        else:
            rd, bd = pairs["done_rate_run"].to_numpy(float), pairs["done_rate_base"].to_numpy(float)
        d = regression.decide("done_rate", rd, bd, threshold=thresholds.get("done_rate"),
                              seed=rcfg.seed + 100, **kw)
        if pairing == "prompt":
            d.method = "paired_bootstrap_by_prompt"
        decisions.append(d)
    decisions += _set_level(run, base, rcfg, thresholds)
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
