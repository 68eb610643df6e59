"""What a distillation method is (`MethodSpec`), its per-asset state (`MethodState`), and the
registry of methods (`METHODS`, a `common.plugins.Registry`).

A spec holds what the generation loop needs of a method without branching on its name: its
UNet-call pattern and timestep sampler (`kernel`: a `kernels.distill.DistillMethod`, pure tensor
code), its params built from the config (`params`), its schedule (`schedule`), its noise (`noise`: a
fixed eps_star drawn once per asset and at each NaN retry, or fresh noise every iteration), its
per-asset state (`state`: by default the noise alone; a stateful method's own `MethodState`
subclass: a buffer, a LoRA), and the config keys it reads (`config_keys`: what its asset ids hash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch
from torch import Tensor

from common.plugins import Registry
from kernels.ddim import TimestepSample
from kernels.distill import DistillMethod, Schedule, make_eps_star
from stages import kernel_params


class NoiseState(Protocol):
    """A method's noise: `draw` the per-asset fixed noise (fresh asset, each retry; None = none),
    `noise` the iteration's noise from it."""

    def draw(self, shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Optional[Tensor]: ...
    def noise(self, state: Optional[Tensor], shape: tuple[int, ...], gen: torch.Generator,
              device: torch.device) -> Tensor: ...


@dataclass(frozen=True)
class FixedNoise:
    """eps_star = randn + offset * randn per channel, drawn once per asset (SCTD, CDS, GCS, ISM)."""

    offset: float

    def draw(self, shape, gen, device):
        return make_eps_star(shape, self.offset, gen, device)

    def noise(self, state, shape, gen, device):
        return state


@dataclass(frozen=True)
class FreshNoise:
    """New Gaussian noise every iteration (SDS)."""

    def draw(self, shape, gen, device):
        return None

    def noise(self, state, shape, gen, device):
        return torch.randn(shape, generator=gen, device=device)


@dataclass(frozen=True)
class MethodContext:
    """What a method's state is built for: one asset's latent batch on its device, with its prior
    (a state that runs the prior's networks, e.g. a VSD-style LoRA, takes them from here)."""

    latent_shape: tuple[int, ...]     # (batch_views, C, h, w)
    device: torch.device
    prior: Any = None


class MethodState:
    """One asset's state of a method: created per asset, advanced every iteration, saved in and
    restored from the checkpoint. The loop never branches on what it holds.

    The loop calls, per asset: `reseed(gen)` on a fresh asset and after each NaN rollback (draw
    what depends on the attempt's noise generator); per iteration `noise(gen)` (the noise the
    gradient uses) and, after the method's gradient, `update(it, z, ts, grad, terms)` (advance the
    state; returns the gradient that is applied, `grad` itself unless the state changes it; it may
    add 0-d tensors / floats to `terms`); at checkpoints `state_dict()` (name -> tensor, names
    without "/"; the loop copies them to the host) and on resume / rollback `load_state_dict(d)`
    (tensors already on the asset's device, owned by the state).

    This base holds the noise alone (`eps_star` of a fixed-noise method, nothing for fresh noise);
    a stateful method subclasses it (tests/plugins/ema_sds_method.py: a per-asset EMA buffer).
    """

    def __init__(self, noise: NoiseState, ctx: MethodContext) -> None:
        self.noise_state, self.ctx = noise, ctx
        self.eps_star: Optional[Tensor] = None

    def reseed(self, gen: torch.Generator) -> None:
        self.eps_star = self.noise_state.draw(self.ctx.latent_shape, gen, self.ctx.device)

    def noise(self, gen: torch.Generator) -> Tensor:
        return self.noise_state.noise(self.eps_star, self.ctx.latent_shape, gen, self.ctx.device)

    def update(self, it: int, z: Tensor, ts: TimestepSample, grad: Tensor, terms: dict) -> Tensor:
        return grad

    def state_dict(self) -> dict[str, Tensor]:
        return {"eps_star": self.eps_star} if self.eps_star is not None else {}

    def load_state_dict(self, d: dict[str, Tensor]) -> None:
        self.eps_star = d.get("eps_star")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kernel: DistillMethod                                # grad (UNet-call pattern) + sampler
    config_keys: tuple[str, ...]                         # the generate.* keys it reads (asset ids)
    noise: Callable[[Any], NoiseState]                   # cfg -> its noise
    params: Callable[[Any], Any]                         # cfg -> its params object (its own class)
    schedule: Callable[[Any], Schedule] = kernel_params.schedule  # cfg -> its timestep schedule
    row_sections: tuple[str, ...] = field(default=())    # its config sections a prompt row may set
    # (cfg, ctx) -> a new per-asset state; None: `MethodState` over its noise (no other state)
    state: Optional[Callable[[Any, MethodContext], MethodState]] = None

    @property
    def grad(self):
        return self.kernel.grad

    @property
    def sample(self):
        return self.kernel.sample

    def new_state(self, cfg: Any, ctx: MethodContext) -> MethodState:
        """A fresh per-asset state of this method (not yet seeded: `reseed` draws its noise)."""
        if self.state is not None:
            return self.state(cfg, ctx)
        return MethodState(self.noise(cfg), ctx)


METHODS: Registry[MethodSpec] = Registry(
    "distillation method", "generate.method",
    unknown=lambda name, names: f"unknown distillation method {name!r}; choose one of {sorted(names)}")


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add `spec` under `spec.name` (a name another module registered: one-line PluginError)."""
    return METHODS.register(spec, replace=replace)


def method_names() -> list[str]:
    return sorted(METHODS.names())


def get_method(name: str) -> MethodSpec:
    """The method `name`; UnknownComponent (a ValueError, one line naming the choices) if none."""
    return METHODS.get(name)
