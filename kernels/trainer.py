"""The 3DGS-style trainer of a `Gaussians`: Adam with LR schedules, per-parameter gradient-norm
clipping, densification (clone / split), pruning and opacity resets.

`GaussianTrainer` owns one Adam state per parameter group and keeps it aligned with the Gaussians
through densification and pruning (moments of new Gaussians start at zero, as in 3DGS), so a run
resumed from `state_dict()` continues bit for bit. It consumes render outputs (the view-space
gradients of `RenderOutput.means2d`), which is why it lives apart from the parameter container.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kernels.gaussians import PARAM_NAMES, Gaussians, quat_to_rotmat

if TYPE_CHECKING:  # pragma: no cover
    from kernels.render import RenderOutput

log = logging.getLogger(__name__)


@dataclass
class TrainerParams:
    """3DGS/LucidDreamer optimisation constants (docs/METHOD.md "Training settings"; defaults = its values)."""

    max_steps: int = 5000
    scene_extent: float = 3.5
    position_lr_init: float = 1.6e-4  # x scene_extent
    position_lr_final: float = 1.6e-6  # x scene_extent
    color_lr_init: float = 5e-3
    color_lr_final: float = 3e-3
    color_rest_lr_ratio: float = 1.0 / 20.0  # higher SH bands, as in 3DGS
    opacity_lr: float = 0.05
    scale_lr_init: float = 5e-3
    scale_lr_final: float = 1e-3
    rotation_lr_init: float = 1e-3
    rotation_lr_final: float = 2e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-15
    grad_clip_start: float = 2.0  # per-parameter-tensor gradient-norm clip ...
    grad_clip_end: float = 8.0  # ... rising linearly ...
    grad_clip_ramp_iters: int = 1000  # ... over these first iterations (0 = no ramp)
    densify_start: int = 100
    densify_end: int = 3000
    densify_every: int = 100
    densify_grad_threshold: float = 7.5e-4  # mean view-space (NDC-scaled) gradient norm
    percent_dense: float = 0.003  # x scene_extent: clone below, split above
    split_n: int = 2
    prune_opacity: float = 0.005
    prune_screen_size_px: float = 20.0
    prune_screen_after: int = 300  # screen/world-size pruning only after this iteration
    prune_world_size: float = 0.35  # world units (= 0.1 x the spec's extent 3.5)
    opacity_reset_every: int = 300  # 0 = never
    opacity_reset_value: float = 0.01
    max_gaussians: int = 1_000_000  # densification stops adding beyond this
    seed: int = 0  # split sampling

    def __post_init__(self) -> None:
        for name in ("max_steps", "densify_every", "split_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainerParams.{name}={getattr(self, name)}: must be >= 1")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ValueError(f"TrainerParams.{f.name}={v}: must be >= 0")


def exp_lr(init: float, final: float, iteration: int, max_steps: int) -> float:
    """3DGS's log-linear decay from init (iteration 0) to final (max_steps)."""
    if init == final or init <= 0 or final <= 0:
        return init
    t = min(max(iteration / max_steps, 0.0), 1.0)
    return math.exp(math.log(init) * (1 - t) + math.log(final) * t)


class GaussianTrainer:
    """Optimises a `Gaussians` in place.

    Usage per iteration (1-based): ``out = render(g, cams); loss.backward(); trainer.step(it, out)``.
    `step` clips each parameter's gradient, takes an Adam step with the scheduled learning rates,
    accumulates densification statistics from `out.means2d.grad` over every view of the batch,
    then densifies/prunes/resets opacity on schedule. Parameter tensors of `g` are replaced when
    the Gaussian count changes, so always read them from `trainer.g` (the same object).
    Adam is written out here (not torch.optim) so rows can be added/removed with their moments.
    """

    def __init__(self, g: Gaussians, params: TrainerParams | None = None) -> None:
        self.p = params or TrainerParams()
        self.g = g.requires_grad_(True)
        self.exp_avg = {n: torch.zeros_like(t) for n, t in g.params().items()}
        self.exp_avg_sq = {n: torch.zeros_like(t) for n, t in g.params().items()}
        self.adam_step = {n: 0 for n in PARAM_NAMES}
        # split samples drawn where the Gaussians live (no host-to-device copy of the noise)
        self.generator = torch.Generator(device=g.means.device).manual_seed(self.p.seed)
        self._reset_stats()
        self.last_log: dict[str, float] = {}

    # schedules -------------------------------------------------------------------------------
    def learning_rates(self, iteration: int) -> dict[str, float]:
        p, e = self.p, self.p.scene_extent
        return {
            "means": exp_lr(p.position_lr_init * e, p.position_lr_final * e, iteration, p.max_steps),
            "log_scales": exp_lr(p.scale_lr_init, p.scale_lr_final, iteration, p.max_steps),
            "quats": exp_lr(p.rotation_lr_init, p.rotation_lr_final, iteration, p.max_steps),
            "opacity_logits": p.opacity_lr,
            "sh": exp_lr(p.color_lr_init, p.color_lr_final, iteration, p.max_steps),
        }

    def grad_clip(self, iteration: int) -> float:
        p = self.p
        if p.grad_clip_ramp_iters <= 0:
            return p.grad_clip_end
        t = min(max(iteration / p.grad_clip_ramp_iters, 0.0), 1.0)
        return p.grad_clip_start + (p.grad_clip_end - p.grad_clip_start) * t

    # one iteration ---------------------------------------------------------------------------
    def step(self, iteration: int, render_out: "RenderOutput | None" = None) -> dict[str, Tensor]:
        """Clip, Adam step, densification statistics, then densify/prune/reset on schedule.

        Returns each parameter's gradient norm before clipping (0-d tensors on the device). The
        step never reads a value back to the host (the clip factor is computed on the device), so
        a non-finite gradient is not detected here: the caller checks these norms (the generate
        loop folds them into its one finiteness check per iteration and rolls back on failure).
        """
        p, g = self.p, self.g
        max_norm = self.grad_clip(iteration)
        lrs = self.learning_rates(iteration)
        b1, b2 = p.adam_betas
        self.last_log = {"grad_clip": max_norm, "lr_means": lrs["means"]}
        norms: dict[str, Tensor] = {}
        with torch.no_grad():
            for name in PARAM_NAMES:
                param = getattr(g, name)
                grad = param.grad
                if grad is None:
                    continue
                norm = grad.norm()
                norms[name] = norm
                self.last_log[f"gradnorm_{name}"] = norm
                # clip by max_norm / (norm + 1e-6) when norm > max_norm, in float64 as python's
                # float arithmetic would do it (bit-identical to the host version), without a sync
                n64 = norm.double()
                factor = torch.where(n64 > max_norm, max_norm / (n64 + 1e-6), torch.ones_like(n64))
                grad = grad * factor
                if name == "sh" and g.sh.shape[1] > 1:  # higher SH bands learn slower (3DGS)
                    lr = torch.full((1, g.sh.shape[1], 1), lrs[name] * p.color_rest_lr_ratio,
                                    dtype=param.dtype, device=param.device)
                    lr[:, 0] = lrs[name]
                else:
                    lr = lrs[name]
                self.adam_step[name] += 1
                t = self.adam_step[name]
                m, v = self.exp_avg[name], self.exp_avg_sq[name]
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(p.adam_eps)
                param.sub_(lr * (m / denom) / (1 - b1**t))
                param.grad = None
        if render_out is not None and iteration < p.densify_end:
            self.add_stats(render_out)
        if p.densify_start <= iteration <= p.densify_end and iteration % p.densify_every == 0:
            self.densify_and_prune(iteration)
        if (p.opacity_reset_every > 0 and iteration % p.opacity_reset_every == 0
                and iteration < p.densify_end):
            self.reset_opacity()
        return norms

    # densification ---------------------------------------------------------------------------
    def _reset_stats(self) -> None:
        n, dev = self.g.num(), self.g.means.device
        self.grad_accum = torch.zeros(n, device=dev)
        self.denom = torch.zeros(n, device=dev)
        self.max_radii = torch.zeros(n, device=dev)

    @torch.no_grad()
    def add_stats(self, out: "RenderOutput") -> None:
        """Accumulate the view-space gradient norm of every view where a Gaussian is visible.

        The authors' code (SegmentDreamer / LucidDreamer `train.py` + `add_densification_stats`)
        renders the B views one by one and, once per iteration, adds the norm of the LAST view's
        screen-space gradient (in NDC units: 3DGS's rasteriser scales pixel gradients by W/2, H/2)
        to every Gaussian visible in that view and counts 1. The views are i.i.d., so each view
        here is added the same way (its norm, count 1 where visible): `grad_accum / denom` has the
        authors' expectation and threshold, from B times the samples (docs/METHOD.md). No factor B:
        the distillation gradient reaches each view without a 1/B, as in the authors' code.
        """
        grad = out.means2d.grad
        if grad is None:
            return
        B, N = out.radii.shape
        if N != self.g.num():
            raise ValueError(f"add_stats: render output has {N} Gaussians, trainer has {self.g.num()}; "
                             "render from trainer.g after each step")
        H, W = out.rgb.shape[1], out.rgb.shape[2]
        # pixel -> NDC units with host scalars (no per-iteration tensor from the host)
        norms = torch.stack([grad[..., 0] * (W / 2.0), grad[..., 1] * (H / 2.0)], dim=-1).norm(dim=-1)  # (B, N)
        vis = out.radii > 0
        self.grad_accum += torch.where(vis, norms, torch.zeros_like(norms)).sum(0).to(self.grad_accum)
        self.denom += vis.sum(0).to(self.denom)
        self.max_radii = torch.maximum(self.max_radii, out.radii.max(0).values.to(self.max_radii))

    def _edit_rows(self, keep: Tensor, new: dict[str, Tensor]) -> None:
        """Keep rows `keep` of every parameter (and its Adam moments), then append `new` rows
        (with zero moments)."""
        g = self.g
        n_new = new["means"].shape[0] if new else 0
        for name in PARAM_NAMES:
            old = getattr(g, name).detach()
            parts = [old[keep]] + ([new[name].to(old)] if n_new else [])
            setattr(g, name, torch.cat(parts).requires_grad_(True))
            for st in (self.exp_avg, self.exp_avg_sq):
                z = [st[name][keep]] + ([torch.zeros_like(new[name]).to(old)] if n_new else [])
                st[name] = torch.cat(z)
        pad = lambda t: torch.cat([t[keep], torch.zeros(n_new, device=t.device, dtype=t.dtype)])  # noqa: E731
        self.grad_accum, self.denom, self.max_radii = pad(self.grad_accum), pad(self.denom), pad(self.max_radii)

    @torch.no_grad()
    def densify_and_prune(self, iteration: int) -> dict[str, int]:
        """Clone small / split large high-gradient Gaussians, then prune; returns the counts."""
        p, g = self.p, self.g
        n0 = g.num()
        grads = torch.nan_to_num(self.grad_accum / self.denom, nan=0.0, posinf=0.0)
        max_scale = g.scales.max(dim=1).values
        big = grads >= p.densify_grad_threshold
        small_enough = max_scale <= p.percent_dense * p.scene_extent
        room = max(0, p.max_gaussians - n0)
        clone = big & small_enough
        split = big & ~small_enough
        # keep the strongest within the room: in descending statistic, every candidate whose
        # cumulative cost (clone 1, split split_n - 1 new Gaussians) fits; on the device, no loop
        order = torch.argsort(torch.where(big, grads, torch.full_like(grads, -1.0)), descending=True)
        cost = torch.where(clone, 1, p.split_n - 1)[order]
        fits = (torch.cumsum(cost, 0) <= room) & big[order]
        sel = torch.zeros_like(big).scatter_(0, order, fits)
        clone, split = clone & sel, split & sel
        # clone: copies appended
        new = {n: t.detach()[clone] for n, t in g.params().items()}
        # split: split_n samples from each parent's Gaussian, scales / (0.8 * split_n)
        if bool(split.any()):
            k = p.split_n
            sc = g.scales[split].repeat(k, 1)
            noise = torch.randn(sc.shape, generator=self.generator, dtype=torch.float32,
                                device=self.generator.device).to(sc)
            R = quat_to_rotmat(g.quats[split].repeat(k, 1))
            s_new = {
                "means": (R @ (noise * sc)[:, :, None])[:, :, 0] + g.means[split].repeat(k, 1),
                "log_scales": torch.log(sc / (0.8 * k)),
                "quats": g.quats[split].repeat(k, 1),
                "opacity_logits": g.opacity_logits[split].repeat(k),
                "sh": g.sh[split].repeat(k, 1, 1),
            }
            new = {n: torch.cat([new[n], s_new[n].detach()]) for n in PARAM_NAMES}
        self._edit_rows(~split, new)
        n_clone, n_split = int(clone.sum()), int(split.sum())
        # prune
        prune = g.opacities < p.prune_opacity
        if iteration > p.prune_screen_after:
            prune |= self.max_radii > p.prune_screen_size_px
            prune |= g.scales.max(dim=1).values > p.prune_world_size
        if bool(prune.all()):
            log.warning("prune would remove all %d Gaussians at iteration %d; keeping them", g.num(), iteration)
            prune = torch.zeros_like(prune)
        n_prune = int(prune.sum())
        self._edit_rows(~prune, {})
        self._reset_stats()
        counts = {"before": n0, "cloned": n_clone, "split": n_split, "pruned": n_prune, "after": g.num()}
        log.info("densify at %d: %s", iteration, counts)
        self.last_log.update({f"densify_{k}": float(v) for k, v in counts.items()})
        return counts

    @torch.no_grad()
    def reset_opacity(self) -> None:
        """Opacities to at most `opacity_reset_value`; their Adam moments restart at zero."""
        g = self.g
        cap = math.log(self.p.opacity_reset_value / (1 - self.p.opacity_reset_value))
        g.opacity_logits = torch.clamp_max(g.opacity_logits.detach(), cap).requires_grad_(True)
        self.exp_avg["opacity_logits"].zero_()
        self.exp_avg_sq["opacity_logits"].zero_()

    # resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "gaussians": self.g.state_dict(),
            "exp_avg": {n: t.clone() for n, t in self.exp_avg.items()},
            "exp_avg_sq": {n: t.clone() for n, t in self.exp_avg_sq.items()},
            "adam_step": torch.tensor([self.adam_step[n] for n in PARAM_NAMES]),
            "grad_accum": self.grad_accum.clone(),
            "denom": self.denom.clone(),
            "max_radii": self.max_radii.clone(),
            "generator": self.generator.get_state(),
            "params": {k: torch.tensor(v) for k, v in asdict(self.p).items()},
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore everything `state_dict` saved into this trainer (and its `g`, in place)."""
        src = Gaussians.from_state_dict(d["gaussians"])
        if src.sh_degree != self.g.sh_degree:
            raise ValueError(f"load_state_dict: checkpoint sh_degree {src.sh_degree} != {self.g.sh_degree}")
        dev = self.g.means.device
        for n in PARAM_NAMES:
            setattr(self.g, n, getattr(src, n).to(dev).requires_grad_(True))
        self.exp_avg = {n: d["exp_avg"][n].to(dev).clone() for n in PARAM_NAMES}
        self.exp_avg_sq = {n: d["exp_avg_sq"][n].to(dev).clone() for n in PARAM_NAMES}
        self.adam_step = {n: int(v) for n, v in zip(PARAM_NAMES, d["adam_step"].tolist())}
        self.grad_accum = d["grad_accum"].to(dev).clone()
        self.denom = d["denom"].to(dev).clone()
        self.max_radii = d["max_radii"].to(dev).clone()
        self.generator.set_state(d["generator"])
