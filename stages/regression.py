"""Noise-aware regression decision: paired differences on shared assets + a seeded bootstrap CI.

Why paired: nightly runs share prompts and seeds, so per-asset differences cancel the (large)
prompt-to-prompt spread and leave the run-to-run change. Why a bootstrap: metric differences are
neither normal nor many (a toy nightly has a dozen assets); the percentile bootstrap of the mean
difference makes no distributional assumption and is deterministic given its seed.

Conventions: `diff = run - baseline` in the metric's own units. A metric's `direction` is +1 when
higher is better (all per-asset metrics) and -1 when lower is better (FID). The decision uses the
signed change `direction * diff` (positive = better).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

LOWER_IS_BETTER = frozenset({"fid"})
RULES = ("ci_beyond_threshold", "significant_and_material")


def direction(metric: str) -> int:
    """+1 when higher values are better, -1 when lower are (FID)."""
    return -1 if metric.lower() in LOWER_IS_BETTER else 1


def bootstrap_mean_ci(diffs: Sequence[float], n_boot: int, confidence: float,
                      seed: int) -> tuple[float, float, float]:
    """Mean of `diffs` and its percentile-bootstrap CI; deterministic for a given seed.

    Resamples are drawn in chunks so memory stays bounded for large runs (n * n_boot floats).
    """
    x = np.asarray(diffs, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_mean_ci: need a non-empty 1-D sequence of differences, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_mean_ci: differences contain NaN/inf; drop missing values first")
    if n_boot < 1:
        raise ValueError(f"bootstrap_mean_ci: n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_mean_ci: confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    n = x.size
    chunk = max(1, min(n_boot, 2_000_000 // n))
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return mean, float(lo), float(hi)


@dataclass
class MetricDecision:
    """One metric's comparison; `status` is ok | regressed | improved | insufficient | missing."""

    metric: str
    direction: str                 # "higher" | "lower" (which is better)
    n: int                         # number of paired assets
    run_mean: float | None
    baseline_mean: float | None
    mean_diff: float | None        # run - baseline, metric units
    ci_low: float | None
    ci_high: float | None
    threshold: float | None        # None: reported, not gated
    status: str
    regressed: bool
    method: str = "paired_bootstrap"
    note: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["ci"] = [self.ci_low, self.ci_high]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def decide(metric: str, run_values: Sequence[float], base_values: Sequence[float], *,
           threshold: float | None, n_boot: int, confidence: float, seed: int,
           rule: str = "ci_beyond_threshold", min_pairs: int = 3) -> MetricDecision:
    """Compare paired per-asset values (same order, same assets) of one metric.

    Rules (signed change c = direction * (run - baseline), CI of its mean [c_lo, c_hi]):
    - ci_beyond_threshold: regressed when c_hi < -threshold (confidently worse by more than
      the threshold: few false alarms on noisy nights).
    - significant_and_material: regressed when c_hi < 0 and mean(c) < -threshold (the drop is
      statistically clear and larger than the threshold).
    `improved` mirrors the chosen rule on the other side. With fewer than `min_pairs` pairs the
    metric is `insufficient` and never gates.
    """
    if rule not in RULES:
        raise ValueError(f"regression rule {rule!r} is not one of {list(RULES)}; set report.rule")
    if threshold is not None and threshold < 0:
        raise ValueError(f"threshold for {metric!r} must be >= 0, got {threshold}")
    r = np.asarray(run_values, dtype=np.float64)
    b = np.asarray(base_values, dtype=np.float64)
    if r.shape != b.shape:
        raise ValueError(f"{metric}: run and baseline values must be paired (shapes {r.shape} vs {b.shape})")
    keep = np.isfinite(r) & np.isfinite(b)
    r, b = r[keep], b[keep]
    sgn = direction(metric)
    dname = "higher" if sgn > 0 else "lower"
    n = int(r.size)
    if n == 0:
        return MetricDecision(metric, dname, 0, None, None, None, None, None, threshold,
                              "insufficient", False, note="no shared assets with this metric")
    d = r - b
    mean, lo, hi = bootstrap_mean_ci(d, n_boot, confidence, seed)
    base = dict(metric=metric, direction=dname, n=n, run_mean=float(r.mean()),
                baseline_mean=float(b.mean()), mean_diff=mean, ci_low=lo, ci_high=hi,
                threshold=threshold)
    if n < min_pairs:
        return MetricDecision(**base, status="insufficient", regressed=False,
                              note=f"only {n} shared assets (report.min_pairs={min_pairs})")
    # signed change: positive = better; its CI flips with the sign
    c_mean = sgn * mean
    c_lo, c_hi = (lo, hi) if sgn > 0 else (-hi, -lo)
    t = 0.0 if threshold is None else float(threshold)
    if rule == "ci_beyond_threshold":
        worse, better = c_hi < -t, c_lo > t
    else:
        worse = c_hi < 0 and c_mean < -t
        better = c_lo > 0 and c_mean > t
    if threshold is None:
        status = "worse" if worse else ("improved" if better else "ok")
        return MetricDecision(**base, status=status, regressed=False, note="no threshold: not gated")
    status = "regressed" if worse else ("improved" if better else "ok")
    return MetricDecision(**base, status=status, regressed=bool(worse))


def decide_point(metric: str, run_value: float | None, base_value: float | None, *,
                 threshold: float | None) -> MetricDecision:
    """Run-level metrics with one number per run (FID): no CI; regressed when worse by > threshold."""
    sgn = direction(metric)
    dname = "higher" if sgn > 0 else "lower"
    if run_value is None or base_value is None or not (math.isfinite(run_value) and math.isfinite(base_value)):
        return MetricDecision(metric, dname, 0, run_value, base_value, None, None, None, threshold,
                              "insufficient", False, method="point",
                              note="run-level value missing in run or baseline")
    diff = float(run_value - base_value)
    t = 0.0 if threshold is None else float(threshold)
    worse, better = sgn * diff < -t, sgn * diff > t
    gated = threshold is not None
    status = ("regressed" if gated else "worse") if worse else ("improved" if better else "ok")
    return MetricDecision(metric, dname, 1, float(run_value), float(base_value), diff, diff, diff,
                          threshold, status, bool(worse and gated), method="point",
                          note="" if gated else "no threshold: not gated")
