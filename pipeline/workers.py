"""Per-worker-process state: the loaded prior, reused across the assets a worker generates.

Why: loading a prior (Stable Diffusion: seconds to minutes) per asset would dominate a batch; a
Ray actor or the local process keeps one warm. One prior at a time: a different prior/toy config
replaces it (memory stays bounded).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from common.config import Config
from stages.generate import GenerateResult
from stages.generate import generate as _generate
from stages.priors.registry import load_prior

_PRIORS: dict[str, Any] = {}   # per worker process: {prior + toy config (JSON): loaded prior}


def cached_prior(cfg: Config) -> Any:
    """The prior for `cfg.prior` (and `cfg.toy`), loaded once per worker process."""
    key = json.dumps([dataclasses.asdict(cfg.prior), dataclasses.asdict(cfg.toy)], sort_keys=True)
    if key not in _PRIORS:
        _PRIORS.clear()
        _PRIORS[key] = load_prior(cfg.prior, cfg.prior.device, toy=cfg.toy)
    return _PRIORS[key]


def generate(cfg: Config, prompt: str, seed: int, asset_dir: str,
             progress: bool = False) -> GenerateResult:
    """stages.generate.generate with this worker's cached prior (actors stay warm)."""
    return _generate(cfg, prompt, seed, asset_dir, progress=progress, prior=cached_prior(cfg))
