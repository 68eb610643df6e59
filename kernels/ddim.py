"""Deterministic DDIM steps, SCTD segment edges and the per-iteration timestep sampler.

Pure tensor/number code (no I/O, no config objects). Every constant of docs/METHOD.md arrives as a
field of a plain dataclass whose default is the spec's value; stages fill them from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _as_alpha(a: Tensor | float, like: Tensor) -> Tensor:
    """alpha_bar as a tensor broadcastable against `like` (scalar or per-batch (B,)).

    A python number becomes a device scalar by `torch.full` (a fill, not a host-to-device copy,
    which would wait for the device's queue)."""
    if isinstance(a, (int, float)):
        return torch.full((), a, dtype=like.dtype, device=like.device)
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    if a.ndim == 1 and like.ndim > 1:
        a = a.view(-1, *([1] * (like.ndim - 1)))
    return a


def ddim_step(x: Tensor, a_from: Tensor | float, a_to: Tensor | float, eps: Tensor) -> Tensor:
    """One DDIM (eta = 0) step from noise level alpha_bar `a_from` to `a_to` with prediction `eps`.

    x0 = (x - sqrt(1 - a_from) eps) / sqrt(a_from);  x' = sqrt(a_to) x0 + sqrt(1 - a_to) eps.
    The same formula inverts (a_to < a_from means more noise); with the same `eps` a step there
    and back is the identity up to float rounding.
    """
    if isinstance(a_from, (int, float)) and isinstance(a_to, (int, float)):
        bad = not (0.0 < a_from <= 1.0 and 0.0 < a_to <= 1.0)   # checked on the host: no device sync
    else:
        bad = any(bool(((t <= 0) | (t > 1)).any()) for t in (torch.as_tensor(a_from), torch.as_tensor(a_to)))
    af = _as_alpha(a_from, x)
    at = _as_alpha(a_to, x)
    if bad:
        raise ValueError(f"ddim_step: alpha_bar must lie in (0, 1], got a_from={a_from!r}, a_to={a_to!r}")
    x0 = (x - (1.0 - af).sqrt() * eps) / af.sqrt()
    return at.sqrt() * x0 + (1.0 - at).sqrt() * eps


def sigma_ratio(a: Tensor | float) -> Tensor:
    """sqrt((1 - alpha_bar) / alpha_bar): the noise-to-signal ratio used by b(t) and ISM's w(t)."""
    a = torch.as_tensor(a, dtype=torch.float32)
    return ((1.0 - a) / a).sqrt()


def segment_edges(n_segments: int, kind: str = "uniform", min_step: int = 20, max_step: int = 980,
                  T: int = 1000, t_tau: int = 150) -> list[int]:
    """N_s + 1 integer segment edges of the trajectory [min_step, max_step].

    uniform: round(linspace(min_step, max_step, N_s + 1)) - 1 -> [19, 211, 403, 595, 787, 979].
    mono (segments lengthen with noise): the first segment ends at t_tau and lengths grow by a
    constant integer step d = 2 (span - N_s a) // (N_s (N_s - 1)) with a = t_tau - min_step; this
    integer form reproduces the authors' [20, 150, 311, 503, 726, 980] for N_s = 5 (the paper's
    real-valued formula t_tau + 2m(T - N_s t_tau) / (N_s (N_s - 1)) does not). Any remainder of
    the integer division goes to the last segment so the last edge is always max_step.
    N_s = 1 gives a single segment (plain consistency distillation).
    """
    if not isinstance(n_segments, int) or n_segments < 1:
        raise ValueError(f"segment_edges: n_segments must be an integer >= 1, got {n_segments!r}")
    if not (0 <= min_step < max_step < T):
        raise ValueError(f"segment_edges: need 0 <= min_step < max_step < T, got "
                         f"min_step={min_step}, max_step={max_step}, T={T}")
    if kind == "uniform":
        grid = torch.linspace(float(min_step), float(max_step), n_segments + 1, dtype=torch.float64)
        edges = [int(round(v)) - 1 for v in grid.tolist()]
    elif kind == "mono":
        span = max_step - min_step
        if n_segments == 1:
            return [min_step, max_step]
        a = t_tau - min_step
        if not (0 < a):
            raise ValueError(f"segment_edges(mono): t_tau ({t_tau}) must exceed min_step ({min_step})")
        d = 2 * (span - n_segments * a) // (n_segments * (n_segments - 1))
        if d < 0:
            raise ValueError(
                f"segment_edges(mono): N_s={n_segments} segments of at least t_tau - min_step = {a} "
                f"steps do not fit in [{min_step}, {max_step}]; use N_s <= {span // a} or a smaller "
                f"t_tau, or kind='uniform'")
        edges = [min_step]
        for m in range(n_segments):
            edges.append(edges[-1] + a + m * d)
        edges[-1] = max_step
    else:
        raise ValueError(f"segment_edges: kind must be 'uniform' or 'mono', got {kind!r}")
    if any(b <= e for e, b in zip(edges, edges[1:])):
        raise ValueError(f"segment_edges: {n_segments} segments are too many for [{min_step}, "
                         f"{max_step}] (edges {edges} not strictly increasing)")
    return edges


@dataclass
class TimestepParams:
    """Sampler constants of docs/METHOD.md ("Timestep sampling per iteration")."""

    warmup_iters: int = 1500     # r = 1 - min(it / warmup_iters, 1)
    warmup_span: int = 480       # both ends of t's range move up by int(warmup_span * r)
    t_low: int = 20
    t_high: int = 500            # t ~ randint(t_low + w, t_high + w), high exclusive
    min_gap: int = 80            # t = max(t, s_m + min_gap)
    s_margin: int = 10           # s ~ randint(s_m + s_margin, t - s_margin), high exclusive
    t_cap: int = 999             # deviation (issue 4): t is capped here
    t_tau: int = 150             # two-step inversion when t >= t_tau


@dataclass
class TimestepSample:
    t: int
    s: int
    s_m: int
    two_step: bool


def _randint(lo: int, hi: int, generator: torch.Generator) -> int:
    """Integer uniform on [lo, hi) (numpy/torch convention), from an explicit generator."""
    if hi <= lo:
        raise ValueError(f"empty timestep range [{lo}, {hi})")
    return int(torch.randint(lo, hi, (1,), generator=generator).item())


def warmup_ratio(iteration: int, warmup_iters: int) -> float:
    """r = 1 - min(it / warmup_iters, 1); 0 when there is no warm-up."""
    if warmup_iters <= 0:
        return 0.0
    return 1.0 - min(iteration / warmup_iters, 1.0)


def sample_timesteps(iteration: int, edges: list[int], params: TimestepParams,
                     generator: torch.Generator) -> TimestepSample:
    """Draw (t, s, s_m) for one SCTD iteration (the authors' sampler, docs/METHOD.md).

    s_m is taken only from the first N_s edges (the last edge is the top of the trajectory, not
    the start of a segment) and t is capped at t_cap, so s_m + min_gap never exceeds 999.
    Randint ranges are half-open [low, high).
    """
    if len(edges) < 2:
        raise ValueError(f"sample_timesteps: need at least 2 segment edges, got {edges!r}")
    p = params
    r = warmup_ratio(iteration, p.warmup_iters)
    w = int(p.warmup_span * r)
    t = _randint(p.t_low + w, p.t_high + w, generator)
    starts = edges[:-1]
    below = [e for e in starts if e <= t]
    s_m = max(below) if below else starts[0]
    t = min(max(t, s_m + p.min_gap), p.t_cap)
    if t - p.s_margin <= s_m + p.s_margin:
        raise ValueError(
            f"sample_timesteps: no room for s between s_m={s_m} and t={t} with s_margin="
            f"{p.s_margin} (t_cap={p.t_cap}); raise t_cap or lower the segment edges/s_margin")
    s = _randint(s_m + p.s_margin, t - p.s_margin, generator)
    return TimestepSample(t=t, s=s, s_m=s_m, two_step=t >= p.t_tau)


def sample_uniform_timestep(min_step: int, max_step: int, generator: torch.Generator) -> TimestepSample:
    """t ~ U[min_step, max_step) for SDS/ISM; s and s_m are unused (set to 0)."""
    t = _randint(min_step, max_step, generator)
    return TimestepSample(t=t, s=0, s_m=0, two_step=False)
