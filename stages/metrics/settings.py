"""Which evaluation settings each per-asset metric reads, so a re-score can keep what still holds.

Why per metric: `eval_hash` covers every evaluation key, so re-scoring with
`metrics.metrics=[toy_psnr]` changes it although `toy_rprec` (not recomputed) read nothing that
changed. `sctd3d evaluate` keeps a metric it does not recompute when the keys that metric reads
have the same values as when it was scored, and marks it stale (old value kept aside, with the
keys that changed) when they differ.

The keys each metric reads are listed here; an evaluation key listed nowhere (a new one) counts as
read by every metric until classified (over-inclusion marks a value stale; under-inclusion would
keep a wrong one). Keys of `evaluation_settings` dicts are 'section.key'.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from common.config import TOY_EVALUATION_KEYS

# the evaluation orbit: what the frames (and the toy metrics' own renders) depend on
ORBIT = ("render.backend", "render.num_views", "render.elevation_deg", "render.radius",
         "render.fovy", "render.resolution", "render.background")
_FRAMES = ORBIT + ("metrics.metric_views",)
_TOY = ORBIT + tuple(f"toy.{k}" for k in TOY_EVALUATION_KEYS)

READS: dict[str, tuple[str, ...]] = {
    "clip_l": _FRAMES + ("metrics.clip_model", "metrics.clip_pretrained", "metrics.clip_quick_gelu"),
    "image_reward": _FRAMES + ("metrics.image_reward_checkpoint", "metrics.image_reward_med_config",
                               "metrics.image_reward_tokenizer"),
    "toy_psnr": _TOY,
    "toy_rprec": _TOY,
}
# evaluation keys no per-asset value depends on (which metrics run, the video and contact sheet,
# batching, the run-level FID's own settings)
NOT_READ = ("render.video", "render.fps", "render.sheet_views", "metrics.metrics",
            "metrics.batch_size")
NOT_READ_PREFIXES = ("metrics.fid",)


def _flat(settings: dict) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in settings.items() if isinstance(sec, dict)
            for k, v in sec.items()}


def keys_read(metric: str, settings: dict) -> list[str]:
    """The 'section.key's of `settings` (common.config.evaluation_settings) `metric` reads."""
    flat = _flat(settings)
    claimed = {k for keys in READS.values() for k in keys}
    unclassified = [k for k in flat if k not in claimed and k not in NOT_READ
                    and not k.startswith(NOT_READ_PREFIXES)]
    return sorted(set(READS.get(metric, ())) | set(unclassified))


def metric_settings(metric: str, settings: dict) -> dict[str, Any]:
    flat = _flat(settings)
    return {k: flat.get(k) for k in keys_read(metric, settings)}


def metric_hash(metric: str, settings: dict) -> str:
    body = json.dumps(metric_settings(metric, settings), sort_keys=True, default=str)
    return hashlib.sha256(f"{metric}:{body}".encode()).hexdigest()[:16]


def changed(metric: str, old: dict, new: dict) -> list[str]:
    """'key: old -> new' for each key `metric` reads whose value differs ([] = still valid)."""
    a, b = metric_settings(metric, old), metric_settings(metric, new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
