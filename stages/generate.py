"""Generate one asset: optimise Gaussians against a 2D prior with a distillation gradient.

This module is the stage's entry and its loop: reuse a finished asset, resume from the last
checkpoint, run the iterations with the NaN guard, write the outputs. The concepts live beside it:
the iteration and its state in `stages.optimisation`, checkpoints in `stages.checkpoint`, config ->
kernel parameters in `stages.kernel_params`, the extra losses in `stages.losses`, provenance in
`stages.provenance`. Checkpoints make a restarted asset resume to the same result on CPU; a
non-finite value rolls back to the last checkpoint and retries with a new noise seed.

Outputs in `asset_dir`: asset.ply, asset_it{N}.ply, checkpoints/, meta.json.
"""

from __future__ import annotations

import json
import math
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kernels.gaussians import Gaussians
from kernels.ply import save_ply
from kernels.render import resolve_backend
from common import deadline
from stages.checkpoint import CKPT_DIR, RunState, load_latest_checkpoint, save_checkpoint
from stages.optimisation import Optimisation, read_terms
from stages.provenance import code_version, peak_memory_mb
from common.storage import atomic_path

log = logging.getLogger(__name__)

# the stage's API; the parts it uses have their own homes (stages.checkpoint, kernel_params,
# losses, optimisation, provenance) and are imported from there
__all__ = ["generate", "GenerateResult", "GenerationFailed", "ply_iterations", "summarise_terms"]


class GenerationFailed(RuntimeError):
    """An asset could not be generated (the reason is in the message and in meta.json)."""


@dataclass
class GenerateResult:
    ok: bool
    asset_dir: str
    asset_ply: str | None
    meta_path: str
    iterations: int
    wall_s: float
    unet_calls: int
    num_gaussians: int
    error: str | None = None
    resumed_from: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def ply_iterations(save_at: list[int], iterations: int) -> list[int]:
    """Intermediate .ply iterations; a list made for a longer run (e.g. the spec's [2500, 5000])
    is scaled to this run's length so 'halfway and end' stay halfway and end."""
    pts = sorted({int(v) for v in save_at if int(v) > 0})
    if not pts:
        return []
    if pts[-1] > iterations:
        pts = sorted({max(1, round(v * iterations / pts[-1])) for v in pts})
    return pts


def summarise_terms(history: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per term: mean, median, min, max, first and last 10% means (the loss value is not logged)."""
    out: dict[str, dict[str, float]] = {}
    if not history:
        return out
    keys = sorted({k for h in history for k in h if k not in ("t", "s", "s_m")})
    k10 = max(1, len(history) // 10)
    for k in keys:
        v = torch.tensor([h[k] for h in history if k in h], dtype=torch.float64)
        out[k] = {"mean": float(v.mean()), "median": float(v.median()), "min": float(v.min()),
                  "max": float(v.max()), "first10pct": float(v[:k10].mean()), "last10pct": float(v[-k10:].mean())}
    return out


def _write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), encoding="utf-8")


def _save_ply_atomic(path: Path, g: Gaussians) -> None:
    with atomic_path(path) as tmp:
        save_ply(tmp, g.detach_clone().to("cpu"))


def _finished(out: Path, ident: dict) -> GenerateResult | None:
    """The result of an asset this run already generated in `out`, if there is one."""
    meta_path = out / "meta.json"
    if not (meta_path.exists() and (out / "asset.ply").exists()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("status") != "done" or any(meta.get(k) != v for k, v in ident.items()):
        return None
    log.info("asset already generated in %s; not recomputing", out)
    return GenerateResult(True, str(out), str(out / "asset.ply"), str(meta_path), int(meta["iterations"]),
                          float(meta["wall_s"]), int(meta["unet_calls"]), int(meta["num_gaussians"]), meta=meta)


@dataclass
class _Loop:
    """The iteration loop of one asset with its NaN guard and checkpoints."""

    opt: Optimisation
    gcfg: Any
    out: Path
    ident: dict
    elapsed0: float
    t_start: float = field(default_factory=time.perf_counter)
    points: list = field(default_factory=list)  # the training curve: one dict per logging iteration

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t_start

    def run(self, start: RunState, bar) -> tuple[int, str | None]:
        """Iterate from `start` to the end; returns (last iteration, error or None)."""
        opt, g, ckdir = self.opt, self.gcfg, self.out / CKPT_DIR
        log_every = g.log_every or max(1, g.iterations // 20)
        ply_at = set(ply_iterations(list(g.save_ply_at), g.iterations))
        last_good, it = start, start.iteration          # rollback target (in memory)
        while it < g.iterations:
            try:
                deadline.check(f"generate iteration {it + 1}")  # per-asset limit, run stop request
            except deadline.RunInterrupted:  # SIGINT/SIGTERM: keep the work done so far, then stop
                if g.checkpoint_every > 0 and it > last_good.iteration:
                    save_checkpoint(ckdir, opt.snapshot(it, self.elapsed()), self.ident)
                    log.info("%s: interrupted; checkpoint at iteration %d", self.out, it)
                raise
            it += 1
            try:
                terms = opt.step(it)
            except FloatingPointError as e:
                attempt = opt.attempt + 1
                if attempt > g.nan_retries:
                    opt.attempt = attempt                # meta.json: retries = the tries made
                    error = (f"non-finite values at iteration {it} ({e}); gave up after "
                             f"{g.nan_retries} retries with new noise seeds")
                    log.error("%s: %s", self.out, error)
                    return it, error
                opt.retry(last_good, attempt)
                log.warning("%s: non-finite values at iteration %d (%s); rolling back to iteration %d, "
                            "retry %d/%d with noise seed %d", self.out, it, e, last_good.iteration, attempt,
                            g.nan_retries, opt.noise_seed)
                it = last_good.iteration
                self.points = [p for p in self.points if p["it"] <= it]  # the rolled-back stretch
                if bar is not None:
                    bar.n = it
                    bar.refresh()
                continue
            if bar is not None:
                bar.update(1)
            if it % log_every == 0 or it == g.iterations:
                self._log(it, terms, bar)
            if it in ply_at and it != g.iterations:
                _save_ply_atomic(self.out / f"asset_it{it}.ply", opt.gaussians)
            if g.checkpoint_every > 0 and it % g.checkpoint_every == 0:
                last_good = opt.snapshot(it, self.elapsed())
                save_checkpoint(ckdir, last_good, self.ident)
        return it, None

    def _log(self, it: int, terms: dict, bar) -> None:
        read_terms(self.opt.history)                    # the one device read of logging iterations
        n = self.opt.gaussians.num()
        self.points.append({"it": it, "gaussians": n,
                            **{k: float(v) for k, v in terms.items() if isinstance(v, (int, float))}})
        if bar is not None:
            bar.set_postfix({"N": n, "grad": f"{terms['grad_norm']:.3g}",
                             **{k: f"{v:.3g}" for k, v in terms.items() if k.endswith("_norm") and k != "grad_norm"}})
        log.info("generate %s", json.dumps({"asset": str(self.out), "it": it, "of": self.gcfg.iterations,
                                            "gaussians": n, **{k: round(v, 6) for k, v in terms.items()}}))


def curve_of(points: list[dict]) -> dict[str, list]:
    """The logged points as columns {"it": [...], "gaussians": [...], "<term>": [...]} (None where a
    term was not logged), for meta.json's `curve`: what the report draws. Only the iterations logged
    in this process (a resumed asset's curve starts at its checkpoint)."""
    keys = ["it", "gaussians"] + sorted({k for p in points for k in p} - {"it", "gaussians"})
    return {k: [p.get(k) if p.get(k) is None or math.isfinite(p[k]) else None for p in points]
            for k in keys}


def generate(cfg, prompt: str, seed: int, asset_dir: str, progress: bool = True, *,
             prior=None) -> GenerateResult:
    """Generate one asset into `asset_dir` (resuming from its last checkpoint if there is one).

    `prior` may be passed to reuse a loaded prior across assets; otherwise it is loaded from
    `cfg.prior`. Returns a GenerateResult; a failed asset has ok=False, an error, and no asset.ply.
    """
    from common.config import config_hash
    from stages.generation_id import generation_hash

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"generate: prompt must be a non-empty string, got {prompt!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"generate: seed must be a non-negative integer, got {seed!r}")
    gcfg = cfg.generate
    out = Path(asset_dir)
    out.mkdir(parents=True, exist_ok=True)
    # resume / reuse only what the same generation settings and prior weights made: evaluation
    # settings (render, metrics) never force a regeneration
    ident = {"prompt": prompt, "seed": seed, "generation_hash": generation_hash(cfg)}
    done = _finished(out, ident)
    if done is not None:
        return done

    if prior is None:
        from stages.priors.registry import load_prior
        prior = load_prior(cfg.prior, cfg.prior.device, toy=cfg.toy)
    opt = Optimisation(cfg, prompt, seed, prior)
    if opt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(opt.device)
    state = load_latest_checkpoint(out / CKPT_DIR, ident)
    resumed_from = state.iteration if state is not None else 0
    if state is None:
        state = opt.fresh_state()
    else:
        log.info("resuming %s from checkpoint at iteration %d", out, state.iteration)
    opt.restore(state)

    loop = _Loop(opt, gcfg, out, ident, state.elapsed_s)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=gcfg.iterations, initial=state.iteration, desc=prompt[:30], unit="it",
                   dynamic_ncols=True, leave=False)
    try:
        it, error = loop.run(state, bar)
    finally:
        if bar is not None:
            bar.close()

    read_terms(opt.history)
    wall = loop.elapsed()
    mem, mem_kind = peak_memory_mb(opt.device)
    meta = {
        "prompt": prompt, "seed": seed, "method": gcfg.method, "prior": cfg.prior.name,
        "config_hash": config_hash(cfg), "generation_hash": ident["generation_hash"],
        "code_version": code_version(), "iterations": it if error is None else it - 1,
        "iterations_planned": gcfg.iterations, "wall_s": wall, "unet_calls": opt.unet_calls,
        "unet_calls_per_iteration": opt.unet_calls / max(1, len(opt.history)),
        "peak_memory_mb": mem, "peak_memory_kind": mem_kind, "num_gaussians": opt.gaussians.num(),
        "retries": opt.attempt, "noise_seed": opt.noise_seed, "resumed_from": resumed_from,
        "device": str(opt.device), "renderer": resolve_backend(gcfg.render_backend, opt.device),
        "terms": summarise_terms(opt.history),
        "curve": curve_of(loop.points),
        "deviations": list(getattr(cfg, "deviations", [])),
        "status": "done" if error is None else "failed", "error": error,
    }
    asset_ply = None
    if error is None:
        if it in set(ply_iterations(list(gcfg.save_ply_at), gcfg.iterations)):
            _save_ply_atomic(out / f"asset_it{it}.ply", opt.gaussians)
        asset_ply = out / "asset.ply"
        _save_ply_atomic(asset_ply, opt.gaussians)
    meta_path = out / "meta.json"
    _write_json(meta_path, meta)
    return GenerateResult(ok=error is None, asset_dir=str(out), asset_ply=str(asset_ply) if asset_ply else None,
                          meta_path=str(meta_path), iterations=meta["iterations"], wall_s=wall,
                          unet_calls=opt.unet_calls, num_gaussians=opt.gaussians.num(), error=error,
                          resumed_from=resumed_from, meta=meta)
