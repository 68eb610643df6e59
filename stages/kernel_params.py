"""Config -> the kernels' parameter dataclasses of the loop (trainer, cameras, timestep schedule).

The kernels take plain dataclasses whose defaults are the method's values (docs/METHOD.md); this
module reads `cfg.generate` / `cfg.prior` into the loop's, so a new kernel field needs one line here
and a config field. A method's own params are built in its module (stages/methods/<name>.py).
`tests/test_kernel_params.py` checks that every field of every dataclass built here and by the
registered methods is fed from the config (nothing silently keeps a kernel default).
"""

from __future__ import annotations

from kernels.cameras import CameraSamplerParams
from kernels.ddim import TimestepParams
from kernels.distill import Schedule, make_schedule
from kernels.trainer import TrainerParams

# The generation keys the loop reads for every method (stages.generation_id hashes exactly these,
# with the method's own `stages.methods.MethodSpec.config_keys`, into asset ids). `section.*` = every
# key of the section. tests/test_asset_identity.py checks that the unread keys leave the asset identical.
LOOP_KEYS = ("generate.method", "generate.iterations", "generate.batch_views", "generate.save_ply_at",
             "generate.checkpoint_every", "generate.nan_retries", "generate.render_backend",
             "generate.cameras.*", "generate.optim.*", "generate.densify.*", "generate.losses.*",
             "generate.augment.*")


def trainer_params(cfg, seed: int) -> TrainerParams:
    """Optimiser, learning-rate schedules, clipping and densification of `generate.optim/densify`."""
    g = cfg.generate
    o, d = g.optim, g.densify
    return TrainerParams(
        max_steps=g.iterations, scene_extent=o.scene_extent,
        position_lr_init=o.position_lr_init, position_lr_final=o.position_lr_final,
        color_lr_init=o.color_lr_init, color_lr_final=o.color_lr_final,
        color_rest_lr_ratio=o.color_rest_lr_ratio, opacity_lr=o.opacity_lr,
        scale_lr_init=o.scale_lr_init, scale_lr_final=o.scale_lr_final,
        rotation_lr_init=o.rotation_lr_init, rotation_lr_final=o.rotation_lr_final,
        adam_betas=(o.adam_beta1, o.adam_beta2), adam_eps=o.adam_eps,
        grad_clip_start=o.grad_clip_start, grad_clip_end=o.grad_clip_end,
        grad_clip_ramp_iters=o.grad_clip_ramp_iters,
        densify_start=d.start, densify_end=d.end, densify_every=d.every,
        densify_grad_threshold=d.grad_threshold, percent_dense=d.percent_dense, split_n=d.split_n,
        prune_opacity=d.prune_opacity, prune_screen_size_px=d.prune_screen_size_px,
        prune_screen_after=d.prune_screen_after, prune_world_size=d.prune_world_size,
        opacity_reset_every=d.opacity_reset_every, opacity_reset_value=d.opacity_reset_value,
        max_gaussians=d.max_gaussians, seed=seed,
    )


def camera_params(cfg) -> CameraSamplerParams:
    """Training-camera sampler of `generate.cameras`."""
    c = cfg.generate.cameras
    return CameraSamplerParams(
        radius_range=tuple(c.radius_range), fovy_range=tuple(c.fovy_range),
        polar_range_deg=tuple(c.polar_range_deg), azimuth_range_deg=tuple(c.azimuth_range_deg),
        widen_start=c.widen_start, widen_every=c.widen_every,
        radius_range_final=tuple(c.radius_range_final), fovy_range_final=tuple(c.fovy_range_final),
        radius_scale=c.radius_scale, fovy_scale=tuple(c.fovy_scale),
        jitter_center=c.jitter_center, jitter_target=c.jitter_target, jitter_up=c.jitter_up,
    )


def timestep_params(cfg) -> TimestepParams:
    """SCTD's per-iteration timestep sampler of `generate.sctd`."""
    s = cfg.generate.sctd
    return TimestepParams(warmup_iters=s.warmup_iters, warmup_span=s.warmup_span, t_low=s.t_low,
                          t_high=s.t_high, min_gap=s.min_gap, s_margin=s.s_margin, t_cap=s.t_cap,
                          t_tau=s.t_tau)


def schedule(cfg) -> Schedule:
    """Segment edges (SCTD) and the uniform range (SDS / ISM) every method samples from."""
    s, b = cfg.generate.sctd, cfg.generate.baselines
    return make_schedule(s.n_segments, s.segments, timestep_params(cfg), min_step=s.min_step,
                         max_step=s.max_step, uniform_range=(b.sds_min_step, b.sds_max_step))
