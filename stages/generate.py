"""Generate one asset: optimise Gaussians against a 2D prior with a distillation gradient.

Loop per iteration (SCTD-SPEC.md "Training settings"): training cameras -> render (random
background) -> optional depth-as-input and horizontal flip -> encode -> distillation gradient
(method from `kernels.distill.METHODS`; the loop never branches on the method name) -> extra
losses (TV of rgb and depth, mean scale) -> backward -> `GaussianTrainer.step` (clip, Adam,
LR schedules, densify/prune). Checkpoints make a restarted asset resume to the same result on
CPU; a non-finite value rolls back to the last checkpoint and retries with a new noise seed.

Outputs in `asset_dir`: asset.ply, asset_it{N}.ply, checkpoints/, meta.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kernels.cameras import Cameras, CameraSamplerParams, sample_training_cameras
from kernels.ddim import TimestepParams, TimestepSample
from kernels.distill import (DistillMethod, SCTDParams, Schedule, get_method, latent_grad_loss, make_eps_star,
                             make_schedule)
from kernels.gaussians import Gaussians, GaussianTrainer, TrainerParams
from kernels.ply import save_ply
from kernels.render import RenderOutput, render, resolve_backend
from pipeline import deadline

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2


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


# ------------------------------------------------------------------------------------------------
# config -> kernel parameter dataclasses
# ------------------------------------------------------------------------------------------------
def trainer_params(cfg, seed: int) -> TrainerParams:
    g = cfg.generate
    o, d = g.optim, g.densify
    return TrainerParams(
        max_steps=g.iterations, scene_extent=o.scene_extent,
        position_lr_init=o.position_lr_init, position_lr_final=o.position_lr_final,
        color_lr_init=o.color_lr_init, color_lr_final=o.color_lr_final, opacity_lr=o.opacity_lr,
        scale_lr_init=o.scale_lr_init, scale_lr_final=o.scale_lr_final,
        rotation_lr_init=o.rotation_lr_init, rotation_lr_final=o.rotation_lr_final,
        adam_eps=o.adam_eps, grad_clip_start=o.grad_clip_start, grad_clip_end=o.grad_clip_end,
        grad_clip_ramp_iters=o.grad_clip_ramp_iters,
        densify_start=d.start, densify_end=d.end, densify_every=d.every,
        densify_grad_threshold=d.grad_threshold, percent_dense=d.percent_dense,
        prune_opacity=d.prune_opacity, prune_screen_size_px=d.prune_screen_size_px,
        prune_screen_after=d.prune_screen_after, prune_world_size=d.prune_world_size,
        opacity_reset_every=d.opacity_reset_every, max_gaussians=d.max_gaussians, seed=seed,
    )


def camera_params(cfg) -> CameraSamplerParams:
    c = cfg.generate.cameras
    return CameraSamplerParams(
        radius_range=tuple(c.radius_range), fovy_range=tuple(c.fovy_range),
        polar_range_deg=tuple(c.polar_range_deg), azimuth_range_deg=tuple(c.azimuth_range_deg),
        widen_start=c.widen_start, widen_every=c.widen_every,
        radius_range_final=tuple(c.radius_range_final), fovy_range_final=tuple(c.fovy_range_final),
        jitter_center=c.jitter_center, jitter_target=c.jitter_target, jitter_up=c.jitter_up,
    )


def distill_params(cfg) -> SCTDParams:
    s, b = cfg.generate.sctd, cfg.generate.baselines
    return SCTDParams(
        guidance_scale=cfg.prior.guidance_scale, weight_lambda=s.weight_lambda,
        consistency_approx=s.consistency_approx, cross_term=s.cross_term,
        baseline_lambda=b.weight_lambda, ism_delta_t=b.ism_delta_t, ism_delta_s=b.ism_delta_s,
    )


def schedule(cfg) -> Schedule:
    s, b = cfg.generate.sctd, cfg.generate.baselines
    tp = TimestepParams(warmup_iters=s.warmup_iters, warmup_span=s.warmup_span, t_low=s.t_low,
                        t_high=s.t_high, min_gap=s.min_gap, s_margin=s.s_margin, t_cap=s.t_cap,
                        t_tau=s.t_tau)
    return make_schedule(s.n_segments, s.segments, tp, min_step=s.min_step, max_step=s.max_step,
                         uniform_range=(b.sds_min_step, b.sds_max_step))


def ply_iterations(save_at: list[int], iterations: int) -> list[int]:
    """Intermediate .ply iterations; a list made for a longer run (e.g. the spec's [2500, 5000])
    is scaled to this run's length so 'halfway and end' stay halfway and end."""
    pts = sorted({int(v) for v in save_at if int(v) > 0})
    if not pts:
        return []
    if pts[-1] > iterations:
        pts = sorted({max(1, round(v * iterations / pts[-1])) for v in pts})
    return pts


# ------------------------------------------------------------------------------------------------
# losses and augmentation
# ------------------------------------------------------------------------------------------------
def tv_loss(img: Tensor) -> Tensor:
    """Anisotropic total variation (mean absolute neighbour difference) of (B, H, W, C)."""
    dh = (img[:, 1:] - img[:, :-1]).abs().mean()
    dw = (img[:, :, 1:] - img[:, :, :-1]).abs().mean()
    return dh + dw


def depth_image(depth: Tensor) -> Tensor:
    """(B, H, W, 1) depth -> (B, H, W, 3) in [0, 1] (divided by each view's max) for encoding."""
    m = depth.detach().flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)
    return (depth / m).expand(-1, -1, -1, 3)


def sample_backgrounds(n: int, p_random: float, gen: torch.Generator) -> Tensor:
    """(n, 3): black, or with probability p_random a uniform random colour (per view)."""
    use = torch.rand(n, generator=gen) < p_random
    colours = torch.rand(n, 3, generator=gen)
    return torch.where(use[:, None], colours, torch.zeros_like(colours))


# ------------------------------------------------------------------------------------------------
# checkpoint state
# ------------------------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, Tensor):
            out[key] = v.detach().cpu().contiguous()
        else:
            raise TypeError(f"checkpoint: {key} is a {type(v).__name__}, not a tensor")
    return out


def _unflatten(flat: dict[str, Tensor]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


@dataclass
class _State:
    """Everything that determines the rest of a run (what a checkpoint holds)."""

    iteration: int
    trainer: dict
    gen: Tensor
    gen_noise: Tensor
    eps_star: Tensor | None
    attempt: int
    noise_seed: int
    history: list[dict[str, float]]
    unet_calls: int
    elapsed_s: float

    def tensors(self) -> dict[str, Tensor]:
        d = {"trainer": self.trainer, "gen": self.gen, "gen_noise": self.gen_noise}
        if self.eps_star is not None:
            d["eps_star"] = self.eps_star
        return _flatten(d)

    def info(self) -> dict:
        return {"iteration": self.iteration, "attempt": self.attempt, "noise_seed": self.noise_seed,
                "history": self.history, "unet_calls": self.unet_calls, "elapsed_s": self.elapsed_s}


def _save_checkpoint(ckdir: Path, st: _State, ident: dict) -> None:
    from safetensors.torch import save_file

    ckdir.mkdir(parents=True, exist_ok=True)
    stem = ckdir / f"ckpt_{st.iteration:07d}"
    tmp_t, tmp_j = stem.with_suffix(".safetensors.tmp"), stem.with_suffix(".json.tmp")
    save_file(st.tensors(), str(tmp_t))
    tmp_j.write_text(json.dumps({**ident, **st.info()}), encoding="utf-8")
    os.replace(tmp_t, stem.with_suffix(".safetensors"))
    os.replace(tmp_j, stem.with_suffix(".json"))       # the json is the commit marker
    for old in sorted(ckdir.glob("ckpt_*.json"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
        old.with_suffix(".safetensors").unlink(missing_ok=True)


class CheckpointError(RuntimeError):
    """A checkpoint file that is not what sctd3d writes (e.g. a pickle): refused, never loaded."""


def _load_latest_checkpoint(ckdir: Path, ident: dict) -> _State | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for js in sorted(ckdir.glob("ckpt_*.json"), reverse=True):
        st_path = js.with_suffix(".safetensors")
        try:
            info = json.loads(js.read_text(encoding="utf-8"))
            flat = load_file(str(st_path))
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable checkpoint %s: %s", js, e)
            continue
        except SafetensorError as e:
            # never fall back to unpickling: a checkpoint must be safetensors
            raise CheckpointError(
                f"{st_path}: not a valid safetensors checkpoint ({e}); checkpoints are only ever "
                f"read as safetensors. Move the checkpoints/ directory aside to start this asset "
                f"fresh.") from None
        mismatch = {k: (info.get(k), v) for k, v in ident.items() if info.get(k) != v}
        if mismatch:
            log.warning("checkpoint %s belongs to another run (%s); starting fresh", js, mismatch)
            return None
        d = _unflatten(flat)
        return _State(iteration=int(info["iteration"]), trainer=d["trainer"], gen=d["gen"],
                      gen_noise=d["gen_noise"], eps_star=d.get("eps_star"), attempt=int(info["attempt"]),
                      noise_seed=int(info["noise_seed"]), history=list(info["history"]),
                      unet_calls=int(info["unet_calls"]), elapsed_s=float(info["elapsed_s"]))
    return None


# ------------------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------------------
def code_version() -> str:
    """Package version plus the git commit of the checkout when there is one."""
    try:
        from importlib.metadata import version
        v = version("sctd3d")
    except Exception:  # not installed as a distribution
        v = "0+unknown"
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if sha.returncode == 0 and sha.stdout.strip():
            v += "+g" + sha.stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:  # no git or not a checkout: version only
        log.debug("code version without a git sha: %s", e)
    return v


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "process_max_rss"


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
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _save_ply_atomic(path: Path, g: Gaussians) -> None:
    tmp = path.with_suffix(".ply.tmp")
    save_ply(str(tmp), g.detach_clone().to("cpu"))
    os.replace(tmp, path)


def _noise_seed(seed: int, attempt: int) -> int:
    return (seed * 1_000_003 + 7_919 * attempt + 1) % (2**63 - 1)


# ------------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------------
def generate(cfg, prompt: str, seed: int, asset_dir: str, progress: bool = True, *,
             prior=None) -> GenerateResult:
    """Generate one asset into `asset_dir` (resuming from its last checkpoint if there is one).

    `prior` may be passed to reuse a loaded prior across assets; otherwise it is loaded from
    `cfg.prior`. Returns a GenerateResult; a failed asset has ok=False, an error, and no asset.ply.
    """
    from pipeline.config import config_hash, generation_hash
    from stages.priors.identity import generation_inputs

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"generate: prompt must be a non-empty string, got {prompt!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"generate: seed must be a non-negative integer, got {seed!r}")
    gcfg = cfg.generate
    method = get_method(gcfg.method)
    out = Path(asset_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckdir = out / CKPT_DIR
    chash = config_hash(cfg)
    # resume / reuse only what the same generation settings and prior weights made: evaluation
    # settings (render, metrics) never force a regeneration
    ghash = generation_hash(cfg, generation_inputs(cfg))
    ident = {"prompt": prompt, "seed": seed, "generation_hash": ghash}

    meta_path = out / "meta.json"
    if meta_path.exists() and (out / "asset.ply").exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("status") == "done" and all(meta.get(k) == v for k, v in ident.items()):
            log.info("asset already generated in %s; not recomputing", out)
            return GenerateResult(True, str(out), str(out / "asset.ply"), str(meta_path),
                                  int(meta["iterations"]), float(meta["wall_s"]), int(meta["unet_calls"]),
                                  int(meta["num_gaussians"]), meta=meta)

    if prior is None:
        from stages.priors.registry import load_prior
        prior = load_prior(cfg.prior, cfg.prior.device, toy=cfg.toy)
    device = torch.device(prior.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # alpha_bar as host floats (the float32 values): reading a_t never waits for the device
    alphas = tuple(prior.alphas_cumprod.detach().to("cpu", torch.float32).tolist())
    res = int(prior.image_size)
    B = gcfg.batch_views
    latent_shape = (B, *prior.latent_shape)
    p = distill_params(cfg)
    sched = schedule(cfg)
    cam_p = camera_params(cfg)
    aug, lw = gcfg.augment, gcfg.losses
    ply_at = set(ply_iterations(list(gcfg.save_ply_at), gcfg.iterations))
    tparams = trainer_params(cfg, seed)

    def fresh_state() -> _State:
        from stages.init import init_gaussians
        g0 = init_gaussians(cfg.init, prompt, torch.Generator().manual_seed(seed),
                            toy_catalogue=cfg.toy.catalogue or None)
        tr = GaussianTrainer(g0.to(device), tparams)
        gen = torch.Generator().manual_seed(seed + 1)
        ns = _noise_seed(seed, 0)
        gn = torch.Generator().manual_seed(ns)
        es = make_eps_star(latent_shape, cfg.generate.sctd.eps_star_offset, gn) if method.fixed_noise else None
        return _State(0, tr.state_dict(), gen.get_state(), gn.get_state(), es, 0, ns, [], 0, 0.0)

    state = _load_latest_checkpoint(ckdir, ident)
    resumed_from = state.iteration if state is not None else 0
    if state is None:
        state = fresh_state()
    else:
        log.info("resuming %s from checkpoint at iteration %d", out, state.iteration)
    last_good = state                                   # rollback target (in memory)

    # live objects built from a state
    def materialise(st: _State):
        g = Gaussians.from_state_dict(st.trainer["gaussians"]).to(device)
        tr = GaussianTrainer(g, tparams)
        tr.load_state_dict(st.trainer)
        gen = torch.Generator(); gen.set_state(st.gen)
        gn = torch.Generator(); gn.set_state(st.gen_noise)
        es = st.eps_star.to(device) if st.eps_star is not None else None
        return tr, gen, gn, es

    trainer, gen, gen_noise, eps_star = materialise(state)
    history = list(state.history)
    unet_calls = state.unet_calls
    attempt, noise_seed = state.attempt, state.noise_seed
    elapsed0 = state.elapsed_s
    t_start = time.perf_counter()
    from stages.priors.guidance import make_guided_eps_from_config

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=gcfg.iterations, initial=state.iteration, desc=prompt[:30], unit="it",
                   dynamic_ncols=True, leave=False)
    it = state.iteration
    error: str | None = None
    log_every = gcfg.log_every or max(1, gcfg.iterations // 20)
    try:
        while it < gcfg.iterations:
            try:
                deadline.check(f"generate iteration {it + 1}")  # per-asset limit, run stop request
            except deadline.RunInterrupted:  # SIGINT/SIGTERM: keep the work done so far, then stop
                if gcfg.checkpoint_every > 0 and it > last_good.iteration:
                    read_terms(history)
                    _save_checkpoint(ckdir, _State(
                        it, trainer.state_dict(), gen.get_state(), gen_noise.get_state(),
                        eps_star.detach().cpu() if eps_star is not None else None, attempt,
                        noise_seed, list(history), unet_calls,
                        elapsed0 + time.perf_counter() - t_start), ident)
                    log.info("%s: interrupted; checkpoint at iteration %d", out, it)
                raise
            it += 1
            try:
                terms = _iteration(it, trainer, gen, gen_noise, eps_star, prior, alphas, method, sched, p,
                                   cam_p, aug, lw, res, B, latent_shape, prompt, cfg,
                                   make_guided_eps_from_config, gcfg.render_backend)
            except FloatingPointError as e:
                attempt += 1
                if attempt > gcfg.nan_retries:
                    error = (f"non-finite values at iteration {it} ({e}); gave up after "
                             f"{gcfg.nan_retries} retries with new noise seeds")
                    log.error("%s: %s", out, error)
                    break
                noise_seed = _noise_seed(seed, attempt)
                log.warning("%s: non-finite values at iteration %d (%s); rolling back to iteration %d, "
                            "retry %d/%d with noise seed %d", out, it, e, last_good.iteration, attempt,
                            gcfg.nan_retries, noise_seed)
                trainer, gen, gen_noise, eps_star = materialise(last_good)
                gen_noise = torch.Generator().manual_seed(noise_seed)
                if method.fixed_noise:
                    eps_star = make_eps_star(latent_shape, cfg.generate.sctd.eps_star_offset,
                                             gen_noise).to(device)
                history = list(last_good.history)
                unet_calls = last_good.unet_calls
                it = last_good.iteration
                if bar is not None:
                    bar.n = it
                    bar.refresh()
                continue
            history.append(terms)
            unet_calls += int(terms.get("unet_calls", 0))
            if bar is not None:
                bar.update(1)
            if it % log_every == 0 or it == gcfg.iterations:
                read_terms(history)                     # the one device read of logging iterations
                if bar is not None:
                    bar.set_postfix({"N": trainer.g.num(), "grad": f"{terms['grad_norm']:.3g}",
                                     **{k: f"{v:.3g}" for k, v in terms.items() if k.endswith("_norm")
                                        and k != "grad_norm"}})
                log.info("generate %s", json.dumps({"asset": str(out), "it": it, "of": gcfg.iterations,
                                                    "gaussians": trainer.g.num(),
                                                    **{k: round(v, 6) for k, v in terms.items()}}))
            if it in ply_at and it != gcfg.iterations:
                _save_ply_atomic(out / f"asset_it{it}.ply", trainer.g)
            if gcfg.checkpoint_every > 0 and it % gcfg.checkpoint_every == 0:
                read_terms(history)
                last_good = _State(it, trainer.state_dict(), gen.get_state(), gen_noise.get_state(),
                                   eps_star.detach().cpu() if eps_star is not None else None, attempt,
                                   noise_seed, list(history), unet_calls,
                                   elapsed0 + time.perf_counter() - t_start)
                _save_checkpoint(ckdir, last_good, ident)
    finally:
        if bar is not None:
            bar.close()

    read_terms(history)
    wall = elapsed0 + time.perf_counter() - t_start
    mem, mem_kind = peak_memory_mb(device)
    meta = {
        "prompt": prompt, "seed": seed, "method": gcfg.method, "prior": cfg.prior.name,
        "config_hash": chash, "generation_hash": ghash, "code_version": code_version(), "iterations": it if error is None else it - 1,
        "iterations_planned": gcfg.iterations, "wall_s": wall, "unet_calls": unet_calls,
        "unet_calls_per_iteration": unet_calls / max(1, len(history)),
        "peak_memory_mb": mem, "peak_memory_kind": mem_kind, "num_gaussians": trainer.g.num(),
        "retries": attempt, "noise_seed": noise_seed, "resumed_from": resumed_from,
        "device": str(device), "renderer": resolve_backend(gcfg.render_backend, device),
        "terms": summarise_terms(history),
        "deviations": list(getattr(cfg, "deviations", [])),
        "status": "done" if error is None else "failed", "error": error,
    }
    asset_ply = None
    if error is None:
        if it in ply_at:
            _save_ply_atomic(out / f"asset_it{it}.ply", trainer.g)
        asset_ply = out / "asset.ply"
        _save_ply_atomic(asset_ply, trainer.g)
    _write_json(meta_path, meta)
    return GenerateResult(ok=error is None, asset_dir=str(out), asset_ply=str(asset_ply) if asset_ply else None,
                          meta_path=str(meta_path), iterations=meta["iterations"], wall_s=wall,
                          unet_calls=unet_calls, num_gaussians=trainer.g.num(), error=error,
                          resumed_from=resumed_from, meta=meta)


@dataclass
class IterationDraw:
    """The host-side random inputs of one iteration (drawn from the CPU generator `gen`)."""

    cameras: Cameras
    azimuths: list[float]
    background: Tensor
    use_depth: bool
    flip: bool
    ts: TimestepSample


def draw_iteration(it: int, batch: int, res: int, cam_p: CameraSamplerParams, aug, method: DistillMethod,
                   sched: Schedule, gen: torch.Generator) -> IterationDraw:
    """Cameras, backgrounds, depth/flip flags and timesteps, in the order that fixes a seed's run.

    All of it lives on the host, so reading these values (azimuths for the view prompts, the
    flags, the timesteps) never waits for the device."""
    cams = sample_training_cameras(batch, res, res, it, cam_p, gen)
    bg = sample_backgrounds(batch, aug.background_random_p, gen)
    use_depth = bool(torch.rand((), generator=gen) < aug.depth_input_p)
    flip = bool(torch.rand((), generator=gen) < aug.flip_p)
    ts = method.sample(it, sched, gen)
    return IterationDraw(cams, cams.azimuth_deg.tolist(), bg, use_depth, flip, ts)


def read_terms(history: list[dict]) -> None:
    """Replace the 0-d device tensors among `history`'s terms by floats, in one transfer.

    The loop keeps each iteration's norms on the device and reads them only on logging and
    checkpoint iterations (and at the end), so the other iterations never wait for the device.
    """
    slots = [(h, k) for h in history for k, v in h.items() if isinstance(v, Tensor)]
    if not slots:
        return
    values = torch.stack([h[k].detach().reshape(()).to(torch.float64) for h, k in slots]).tolist()
    for (h, k), v in zip(slots, values):
        h[k] = v


def check_finite(named: list[tuple[str, Tensor]]) -> None:
    """Raise FloatingPointError naming the first non-finite tensor; one device read for all."""
    ok = torch.stack([torch.isfinite(t).all() for _, t in named])
    if not bool(ok.all()):
        first = next(name for (name, _), good in zip(named, ok.tolist()) if not good)
        raise FloatingPointError(f"{first} is not finite")


def _iteration(it, trainer, gen, gen_noise, eps_star, prior, alphas, method, sched, p, cam_p, aug, lw,
               res, B, latent_shape, prompt, cfg, make_guided_eps, backend) -> dict[str, float]:
    """One optimisation step; raises FloatingPointError on any non-finite value.

    Host-side draws (cameras, background, flags, timesteps) come from CPU generators; the device
    work is queued without reading anything back until the one finiteness check at the end.
    """
    g = trainer.g
    device = g.means.device
    d = draw_iteration(it, B, res, cam_p, aug, method, sched, gen)
    cams, bg, use_depth, flip, ts = d.cameras.to(device), d.background.to(device), d.use_depth, d.flip, d.ts
    azimuths = d.azimuths
    noise = eps_star if method.fixed_noise else torch.randn(latent_shape, generator=gen_noise).to(device)
    guided = make_guided_eps(prior, cfg.prior, prompt, azimuths)  # before any device work is queued

    out: RenderOutput = render(g, cams, background=bg, backend=backend)
    img = depth_image(out.depth) if use_depth else out.rgb
    img = img.permute(0, 3, 1, 2)
    if flip:
        img = img.flip(-1)
    z = prior.encode(img, generator=gen_noise)
    grad, terms = method.grad(z, ts, alphas, guided, noise.to(z.dtype), p)
    loss = latent_grad_loss(z, grad)
    extra = {}
    if lw.tv_rgb > 0:
        extra["tv_rgb"] = tv_loss(out.rgb)
    if lw.tv_depth > 0:
        extra["tv_depth"] = tv_loss(out.depth)
    if lw.mean_scale > 0:
        extra["mean_scale"] = g.scales.mean()
    weights = {"tv_rgb": lw.tv_rgb, "tv_depth": lw.tv_depth, "mean_scale": lw.mean_scale}
    for k, v in extra.items():
        loss = loss + weights[k] * v
    loss.backward()
    grad_norms = trainer.step(it, out)
    check_finite([("render", out.rgb), ("distillation gradient", grad),
                  *((f"gradient norm of {n}", v) for n, v in grad_norms.items()),
                  *((f"parameter {n}", t) for n, t in trainer.g.params().items())])
    terms = dict(terms)
    terms.update({k: v.detach() for k, v in extra.items()})
    terms["depth_input"] = float(use_depth)
    terms["gaussians"] = float(trainer.g.num())
    return terms
