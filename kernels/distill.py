"""Distillation gradients on a latent: SCTD and the SDS / ISM / CDS / GCS baselines.

Every method has the same signature, `grad(z, ts, alphas, eps, noise, p) -> (g, terms)`:
`z` the encoded renders (B, C, h, w), `ts` the iteration's timesteps, `alphas` the prior's
alpha_bar (1000,) (a host sequence of floats in the generate loop, so reading a_t never waits
for the device; a tensor works too), `eps` a `GuidedEps` (one code path for CFG and Perp-Neg: the guided
combination is the prior side's business), `noise` the fixed per-asset eps_star (or fresh noise
for SDS), `p` the numbers of docs/METHOD.md. The gradient enters the graph with
`latent_grad_loss(z, g)` (custom autograd: d/dz == g; the scalar value means nothing and is
never logged). `terms` holds norms of the parts of g as 0-d tensors (left on the device: the
loop reads them only when it logs) and host floats (weights, timesteps, prior calls made).

The generate loop picks a method from `METHODS` and never branches on its name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, Union

import torch
from torch import Tensor

from kernels.ddim import (
    TimestepParams,
    TimestepSample,
    ddim_step,
    sample_timesteps,
    sample_uniform_timestep,
    segment_edges,
)


class GuidedEps(Protocol):
    """Noise predictions of a prior for one batch of views (built by stages from prior + prompt)."""

    def null(self, x: Tensor, t: int) -> Tensor:
        """eps(x, t, null): the empty-prompt prediction used for inversion."""
        ...

    def guided(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """(e_w, e_cond): the guided prediction (CFG or Perp-Neg) and eps(x, t, y), one batched call."""
        ...


@dataclass
class SCTDParams:
    """Numbers of the consistency family (SCTD, CDS, GCS), spec values as defaults."""

    guidance_scale: float = 7.5          # omega; the (omega + 1) cross-term weight
    weight_lambda: float = 0.1           # b(t) = lambda * sqrt((1 - a_t) / a_t)
    consistency_approx: bool = True      # G(x_t, t, null) ~= z_sm
    cross_term: str = "guided"           # "guided" = authors' code, "conditional" = paper


@dataclass
class SDSParams:
    """SDS (DreamFusion)."""

    baseline_lambda: float = 1.0         # w(t) = lambda (1 - a_t)


@dataclass
class ISMParams:
    """ISM (LucidDreamer)."""

    baseline_lambda: float = 1.0         # w(t) = lambda sqrt((1 - a_t) / a_t)
    ism_delta_t: int = 50                # s = t - delta_t
    ism_delta_s: int = 200               # inversion stride from 0 to s


Terms = dict[str, Union[float, Tensor]]
Alphas = Union[Sequence[float], Tensor]
GradFn = Callable[[Tensor, TimestepSample, Alphas, GuidedEps, Tensor, Any], tuple[Tensor, Terms]]  # Any: its params


def make_eps_star(shape: tuple[int, ...], offset: float, generator: torch.Generator,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed noise of one asset: randn(B, C, h, w) + offset * randn(1, C, 1, 1) (docs/METHOD.md, "One SCTD step" 1)."""
    if len(shape) != 4:
        raise ValueError(f"make_eps_star: expected a (B, C, h, w) shape, got {shape!r}")
    dev = generator.device            # drawn where the generator lives (a device generator: no copy)
    base = torch.randn(shape, generator=generator, dtype=dtype, device=dev)
    chan = torch.randn((1, shape[1], 1, 1), generator=generator, dtype=dtype, device=dev)
    return (base + offset * chan).to(device)


def weight_b(alpha_t: float, lam: float) -> float:
    """b(t) = lambda * sqrt((1 - a_t) / a_t)."""
    return lam * math.sqrt((1.0 - alpha_t) / alpha_t)


class _LatentGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, g: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(g)
        return z.new_zeros(())

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (g,) = ctx.saved_tensors
        return grad_out * g, None


def latent_grad_loss(z: Tensor, g: Tensor) -> Tensor:
    """A scalar whose gradient w.r.t. z is exactly g (its value, 0, carries no meaning)."""
    if g.shape != z.shape:
        raise ValueError(f"latent_grad_loss: gradient shape {tuple(g.shape)} != latent shape {tuple(z.shape)}")
    return _LatentGrad.apply(z, g.detach().to(z.dtype))


def _check(z: Tensor, noise: Tensor, alphas: Alphas, ts: TimestepSample) -> None:
    if z.ndim != 4:
        raise ValueError(f"expected latents of shape (B, C, h, w), got {tuple(z.shape)}")
    if noise.shape != z.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(z.shape)}; "
                         f"eps_star must be drawn for the same batch size and latent shape")
    n = len(alphas)
    for name in ("t", "s", "s_m"):
        v = getattr(ts, name)
        if not 0 <= v < n:
            raise ValueError(f"timestep {name}={v} outside [0, {n})")


def _norm(x: Tensor) -> Tensor:
    """A 0-d norm left on x's device (float() it to read: that waits for the device)."""
    return x.detach().float().norm()


def _a(alphas: Alphas, k: int) -> float:
    return float(alphas[k])


@torch.no_grad()
def _consistency(z: Tensor, ts: TimestepSample, alphas: Alphas, eps: GuidedEps, eps_star: Tensor,
                 p: SCTDParams, use_self: bool, use_cross: bool) -> tuple[Tensor, Terms]:
    """docs/METHOD.md "One SCTD step" 2-10 (CDS = self term only; GCS = both terms over one segment)."""
    _check(z, eps_star, alphas, ts)
    z = z.detach()
    t, s, s_m = ts.t, ts.s, ts.s_m
    a_t, a_s, a_m = _a(alphas, t), _a(alphas, s), _a(alphas, s_m)
    calls = 0
    z_sm = math.sqrt(a_m) * z + math.sqrt(1.0 - a_m) * eps_star.to(z.dtype)          # step 2
    e0 = eps.null(z_sm, s_m).to(z.dtype); calls += 1                                 # step 3
    if ts.two_step:
        x_s = ddim_step(z_sm, a_m, a_s, e0)
        e1 = eps.null(x_s, s).to(z.dtype); calls += 1
        x_t = ddim_step(x_s, a_s, a_t, e1)
    else:
        x_t = ddim_step(z_sm, a_m, a_t, e0)
    e_w, e_y = eps.guided(x_t, t); calls += 1                                         # step 4
    e_w, e_y = e_w.to(z.dtype), e_y.to(z.dtype)
    if p.consistency_approx:                                                          # step 8
        g_t = z_sm
    else:
        g_t = ddim_step(x_t, a_t, a_m, eps.null(x_t, t).to(z.dtype)); calls += 1
    b = weight_b(a_t, p.weight_lambda)                                                # step 9
    self_term = torch.zeros_like(z)
    cross_term = torch.zeros_like(z)
    if use_self:
        x_s_hat = ddim_step(x_t, a_t, a_s, e_w)                                       # step 5
        A = ddim_step(x_s_hat, a_s, a_m, eps.null(x_s_hat, s).to(z.dtype)); calls += 1  # step 6
        self_term = b * (A - g_t)
    if use_cross:
        if p.cross_term == "guided":                                                  # step 10
            e_b = e_w
        elif p.cross_term == "conditional":
            e_b = e_y
        else:
            raise ValueError(f"cross_term must be 'guided' (authors' code) or 'conditional' "
                             f"(paper), got {p.cross_term!r}")
        B = ddim_step(x_t, a_t, a_m, e_b)                                             # step 7
        cross_term = b * (p.guidance_scale + 1.0) * (g_t - B)
    g = self_term + cross_term
    terms = {"self_norm": _norm(self_term), "cross_norm": _norm(cross_term), "grad_norm": _norm(g),
             "b_t": b, "t": float(t), "s": float(s), "s_m": float(s_m), "unet_calls": float(calls)}
    return g, terms


def sctd_grad(z: Tensor, ts: TimestepSample, alphas: Alphas, eps: GuidedEps, eps_star: Tensor,
              p: SCTDParams) -> tuple[Tensor, Terms]:
    """SCTD: g = b(t) [(A - z_sm) + (omega + 1)(z_sm - B)] (docs/METHOD.md "One SCTD step")."""
    return _consistency(z, ts, alphas, eps, eps_star, p, use_self=True, use_cross=True)


def cds_grad(z: Tensor, ts: TimestepSample, alphas: Alphas, eps: GuidedEps, eps_star: Tensor,
             p: SCTDParams) -> tuple[Tensor, Terms]:
    """CDS (Consistent3D): the self-consistency term only (sampled over one whole-trajectory segment)."""
    return _consistency(z, ts, alphas, eps, eps_star, p, use_self=True, use_cross=False)


def gcs_grad(z: Tensor, ts: TimestepSample, alphas: Alphas, eps: GuidedEps, eps_star: Tensor,
             p: SCTDParams) -> tuple[Tensor, Terms]:
    """GCS (ConnectCD): self + cross consistency over the whole trajectory.

    The formula is SCTD's; what makes it GCS is its sampler (one segment: s_m = min_step - 1),
    so SCTD with N_s = 1 and GCS coincide by construction.
    """
    return _consistency(z, ts, alphas, eps, eps_star, p, use_self=True, use_cross=True)


@torch.no_grad()
def sds_grad(z: Tensor, ts: TimestepSample, alphas: Alphas, eps: GuidedEps, noise: Tensor,
             p: SDSParams) -> tuple[Tensor, Terms]:
    """SDS (DreamFusion): g = w(t) (e_w(x_t) - noise), x_t = sqrt(a_t) z + sqrt(1 - a_t) noise.

    `noise` is fresh every iteration (the caller draws it); w(t) = lambda (1 - a_t).
    """
    _check(z, noise, alphas, ts)
    z = z.detach()
    a_t = _a(alphas, ts.t)
    x_t = math.sqrt(a_t) * z + math.sqrt(1.0 - a_t) * noise.to(z.dtype)
    e_w, _ = eps.guided(x_t, ts.t)
    w = p.baseline_lambda * (1.0 - a_t)
    g = w * (e_w.to(z.dtype) - noise.to(z.dtype))
    return g, {"sds_norm": _norm(g), "grad_norm": _norm(g), "w_t": w, "t": float(ts.t),
               "unet_calls": 1.0}


@torch.no_grad()
def ism_grad(z: Tensor, ts: TimestepSample, alphas: Alphas, eps: GuidedEps, noise: Tensor,
             p: ISMParams) -> tuple[Tensor, Terms]:
    """ISM (LucidDreamer): DDIM-invert z with `null` to s = t - delta_t (stride delta_s), then s -> t;
    g = w(t) (e_w(x_t, t) - eps(x_s, s, null)), w(t) = lambda sqrt((1 - a_t) / a_t). `noise` unused.
    """
    _check(z, noise, alphas, ts)
    z = z.detach()
    t = ts.t
    s = max(t - p.ism_delta_t, 0)
    x = z
    cur = -1                                   # the clean latent: alpha_bar = 1
    calls = 0
    while cur < s:
        nxt = min(cur + p.ism_delta_s, s)
        a_cur = 1.0 if cur < 0 else _a(alphas, cur)
        e = eps.null(x, max(cur, 0)).to(z.dtype); calls += 1
        x = ddim_step(x, a_cur, _a(alphas, nxt), e)
        cur = nxt
    e_s = eps.null(x, s).to(z.dtype); calls += 1
    x_t = ddim_step(x, _a(alphas, s), _a(alphas, t), e_s)
    e_w, _ = eps.guided(x_t, t); calls += 1
    a_t = _a(alphas, t)
    w = p.baseline_lambda * math.sqrt((1.0 - a_t) / a_t)
    g = w * (e_w.to(z.dtype) - e_s)
    return g, {"ism_norm": _norm(g), "grad_norm": _norm(g), "w_t": w, "t": float(t), "s": float(s),
               "unet_calls": float(calls)}


# ------------------------------------------------------------------------------------------------
# Registry: what the generate loop needs to know about a method, so it never branches on a name.
# ------------------------------------------------------------------------------------------------
@dataclass
class Schedule:
    """Timestep-sampling inputs shared by all methods."""

    params: TimestepParams
    edges: list[int]              # N_s + 1 segment edges (SCTD)
    uniform_range: tuple[int, int] = (20, 980)   # SDS / ISM: t ~ U[lo, hi)

    @property
    def whole_trajectory(self) -> list[int]:
        """One segment spanning the trajectory (CDS, GCS)."""
        return [self.edges[0], self.edges[-1]]


Sampler = Callable[[int, Schedule, torch.Generator], TimestepSample]


def _segmented(it: int, sch: Schedule, gen: torch.Generator) -> TimestepSample:
    return sample_timesteps(it, sch.edges, sch.params, gen)


def _one_segment(it: int, sch: Schedule, gen: torch.Generator) -> TimestepSample:
    return sample_timesteps(it, sch.whole_trajectory, sch.params, gen)


def _uniform(it: int, sch: Schedule, gen: torch.Generator) -> TimestepSample:
    return sample_uniform_timestep(sch.uniform_range[0], sch.uniform_range[1], gen)


@dataclass(frozen=True)
class DistillMethod:
    name: str
    grad: GradFn
    sample: Sampler
    fixed_noise: bool      # True: eps_star drawn once per asset; False: fresh noise per iteration


METHODS: dict[str, DistillMethod] = {
    "sctd": DistillMethod("sctd", sctd_grad, _segmented, fixed_noise=True),
    "cds": DistillMethod("cds", cds_grad, _one_segment, fixed_noise=True),
    "gcs": DistillMethod("gcs", gcs_grad, _one_segment, fixed_noise=True),
    "sds": DistillMethod("sds", sds_grad, _uniform, fixed_noise=False),
    "ism": DistillMethod("ism", ism_grad, _uniform, fixed_noise=True),
}


def get_method(name: str) -> DistillMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown distillation method {name!r}; choose one of {sorted(METHODS)}") from None


def make_schedule(n_segments: int, kind: str, params: TimestepParams, min_step: int = 20,
                  max_step: int = 980, uniform_range: tuple[int, int] = (20, 980)) -> Schedule:
    edges = segment_edges(n_segments, kind, min_step=min_step, max_step=max_step, t_tau=params.t_tau)
    return Schedule(params=params, edges=edges, uniform_range=uniform_range)
