"""Per-asset metrics, chosen by `metrics.metrics` (a config value); FID is run-level (fid.py).

`score_asset` always returns every per-asset column of the manifest (clip_l, image_reward,
toy_psnr, toy_rprec); a metric that is not configured is None, never a made-up number, and the
reason is in `scores.reasons` and in `<asset_dir>/metrics.json`. When toy_psnr runs, its
companions toy_psnr_yaw and toy_iou are returned too. Missing weights raise MetricWeightsError
(fail fast: the message names the metric, the checkpoint and the config key for a local path).
"""

from __future__ import annotations

import io
import json
import logging

from common.config import Config
from common.manifest import METRIC_COLUMNS
from stages.metrics.errors import MetricWeightsError

log = logging.getLogger(__name__)

PER_ASSET = METRIC_COLUMNS  # the manifest schema's per-asset metric columns (one list)
METRICS_FILE = "metrics.json"

__all__ = ["MetricScores", "MetricWeightsError", "PER_ASSET", "score_asset"]


class MetricScores(dict):
    """{metric: float | None}; `.reasons[metric]` says why a value is None."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reasons: dict[str, str] = {}


def score_asset(cfg: Config, asset_dir: str, prompt: str) -> MetricScores:
    """Score one rendered asset with the configured metrics; writes asset_dir/metrics.json."""
    from common.storage import open_storage

    mc = cfg.metrics
    wanted = list(mc.metrics)
    out = MetricScores({k: None for k in PER_ASSET})
    for k in PER_ASSET:
        if k not in wanted:
            out.reasons[k] = "not in metrics.metrics"
    if "clip_l" in wanted or "image_reward" in wanted:
        from stages.render import read_frames

        frames = read_frames(asset_dir, mc.metric_views)
        if "clip_l" in wanted:
            from stages.metrics.clip import clip_score

            out["clip_l"] = clip_score(mc, frames, prompt)
        if "image_reward" in wanted:
            from stages.metrics.image_reward import image_reward_score

            out["image_reward"] = image_reward_score(mc, frames, prompt)
    if "toy_psnr" in wanted or "toy_rprec" in wanted:
        from stages.metrics.toy import toy_metrics
        from stages.render import load_asset

        toy = toy_metrics(cfg, load_asset(asset_dir), prompt, rprec="toy_rprec" in wanted)
        if "toy_psnr" in wanted:
            out.update({k: toy[k] for k in ("toy_psnr", "toy_psnr_yaw", "toy_iou")})
        if "toy_rprec" in wanted:
            out["toy_rprec"] = toy["toy_rprec"]
    open_storage(asset_dir).write_text(
        METRICS_FILE, json.dumps({"prompt": prompt, "values": dict(out), "reasons": out.reasons}, indent=2))
    log.info("metrics %r: %s", prompt, {k: v for k, v in out.items() if v is not None})
    return out
