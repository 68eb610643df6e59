"""Per-worker-process state: the loaded prior, reused across the assets a worker generates.

Why: loading a prior (Stable Diffusion: seconds to minutes) per asset would dominate a batch; a
Ray actor or the local process keeps one warm. One prior at a time: a different prior/toy config
replaces it (memory stays bounded).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Optional

from common.config import Config
from stages.generate import GenerateResult
from stages.generate import generate as _generate
from stages.priors.registry import load_prior, require_device

_PRIORS: dict[str, Any] = {}   # per worker process: {prior + toy config (JSON): loaded prior}


def cached_prior(cfg: Config) -> Any:
    """The prior for `cfg.prior` (and `cfg.toy`), loaded once per worker process."""
    key = json.dumps([dataclasses.asdict(cfg.prior), dataclasses.asdict(cfg.toy)], sort_keys=True)
    if key not in _PRIORS:
        _PRIORS.clear()
        _PRIORS[key] = load_prior(cfg.prior, cfg.prior.device, toy=cfg.toy)
    return _PRIORS[key]


# The generation seam (docs/INTERFACES.md, "Test and benchmark seams"): None runs the method
# (stages.generate with this worker's cached prior); a callable with generate's signature that
# returns a GenerateResult replaces it (tests' fakes: tests/fakes.py; benchmarks/bench_pipeline.py).
# Set on the driver; every worker of a run takes the driver's value as it starts (`start_worker`),
# so the same generator runs in-process and on Ray workers. No shipped code path sets it.
GENERATOR: Optional[Callable[..., GenerateResult]] = None


def generate(cfg: Config, prompt: str, seed: int, asset_dir: str,
             progress: bool = False) -> GenerateResult:
    """stages.generate.generate with this worker's cached prior (actors stay warm), or GENERATOR."""
    if GENERATOR is not None:
        return GENERATOR(cfg, prompt, seed, asset_dir, progress=progress)
    return _generate(cfg, prompt, seed, asset_dir, progress=progress, prior=cached_prior(cfg))


def start_worker(prior_cfg: Any, generator: Optional[Callable[..., GenerateResult]] = None) -> None:
    """A worker's start-up, run where the worker is before its first asset (the executor's
    `startup`): the prior's device requirement (stages.priors.registry.require_device), then the
    driver's GENERATOR (None in production: the method)."""
    global GENERATOR
    require_device(prior_cfg)
    GENERATOR = generator
