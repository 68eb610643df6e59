"""Extra losses of the generate loop, by name, summed with the weights of the config's loss section.

The registry follows threestudio's `loss_*` terms: each entry of `generate.losses` is a weight,
each name has a function here `(render output, gaussians) -> scalar`, and the loop adds
`weight * loss` for every positive weight (in the section's field order). A new loss is one
`@register("name")` function plus one config field; `tests/test_losses.py` checks that the two
lists agree.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Callable

from torch import Tensor

from kernels.gaussians import Gaussians
from kernels.render import RenderOutput

LossFn = Callable[[RenderOutput, Gaussians], Tensor]
LOSSES: dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
    def add(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        LOSSES[name] = fn
        return fn
    return add


def tv_loss(img: Tensor) -> Tensor:
    """Anisotropic total variation (mean absolute neighbour difference) of (B, H, W, C)."""
    dh = (img[:, 1:] - img[:, :-1]).abs().mean()
    dw = (img[:, :, 1:] - img[:, :, :-1]).abs().mean()
    return dh + dw


@register("tv_rgb")
def loss_tv_rgb(out: RenderOutput, g: Gaussians) -> Tensor:
    """Smooth colour renders."""
    return tv_loss(out.rgb)


@register("tv_depth")
def loss_tv_depth(out: RenderOutput, g: Gaussians) -> Tensor:
    """Smooth depth renders (fewer floaters)."""
    return tv_loss(out.depth)


@register("mean_scale")
def loss_mean_scale(out: RenderOutput, g: Gaussians) -> Tensor:
    """Mean activated scale: keeps Gaussians from growing into blobs."""
    return g.scales.mean()


def loss_weights(section) -> dict[str, float]:
    """name -> weight from a loss config section (a dataclass of floats), in field order."""
    weights = {f.name: float(getattr(section, f.name)) for f in fields(section)}
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown:
        raise ValueError(f"generate.losses.{unknown[0]}: no such loss; registered: {sorted(LOSSES)}")
    return weights


def extra_losses(weights: dict[str, float], out: RenderOutput, g: Gaussians) -> dict[str, Tensor]:
    """The value of every loss with a positive weight (unweighted)."""
    return {name: LOSSES[name](out, g) for name, w in weights.items() if w > 0}


def add_weighted(loss: Tensor, values: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """loss + sum of weight * value, added one term at a time in `values`' order."""
    for name, v in values.items():
        loss = loss + weights[name] * v
    return loss
