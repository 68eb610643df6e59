"""Distillation methods by name: `generate.method` -> a `MethodSpec`, the one list of valid methods.

A spec holds what the generation loop needs of a method without branching on its name: its
UNet-call pattern and timestep sampler (`kernel`: a `kernels.distill.DistillMethod`, pure tensor
code), its params built from the config (`params`), its schedule (`schedule`), its per-asset noise
state (`noise`: a fixed eps_star drawn once per asset and at each NaN retry, checkpointed; or fresh
noise every iteration), and the config keys it reads (`config_keys`: what its asset ids hash).
A new method: one module that calls `register_method(MethodSpec(...))` (a plugin file:
common/plugins.py: `SCTD3D_PLUGINS` or `pipeline.plugins`; tests/plugins/half_sds_method.py is one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch
from torch import Tensor

from kernels.distill import DistillMethod, Schedule, get_method as get_kernel, make_eps_star
from stages import kernel_params


class NoiseState(Protocol):
    """A method's noise: `draw` the per-asset state (fresh asset, each retry; None = none, stored
    in the checkpoint), `noise` the iteration's noise from it."""

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
class MethodSpec:
    name: str
    kernel: DistillMethod                                # grad (UNet-call pattern) + sampler
    config_keys: tuple[str, ...]                         # the generate.* keys it reads (asset ids)
    noise: Callable[[Any], NoiseState]                   # cfg -> its noise state
    params: Callable[[Any], Any]                         # cfg -> its params object (its own class)
    schedule: Callable[[Any], Schedule] = kernel_params.schedule  # cfg -> its timestep schedule
    row_sections: tuple[str, ...] = field(default=())    # its config sections a prompt row may set

    @property
    def grad(self):
        return self.kernel.grad

    @property
    def sample(self):
        return self.kernel.sample


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> MethodSpec:
    spec = METHODS.get(name)
    if spec is None:
        raise ValueError(f"unknown distillation method {name!r}; choose one of {method_names()}")
    return spec


# ------------------------------------------------------------------------------------------------
# the shipped methods
# ------------------------------------------------------------------------------------------------
def _fixed(cfg) -> NoiseState:
    return FixedNoise(cfg.generate.sctd.eps_star_offset)


def _fixed_unused(cfg) -> NoiseState:
    """ISM ignores the noise, but draws eps_star (the RNG stream, hence its assets, depend on it)."""
    return FixedNoise(0.1)


_CONSISTENCY = ("generate.sctd.*",)
for _name in ("sctd", "cds", "gcs"):
    register_method(MethodSpec(_name, get_kernel(_name), _CONSISTENCY, _fixed, kernel_params.consistency_params,
                               row_sections=("generate.sctd",)))
register_method(MethodSpec("sds", get_kernel("sds"), (
    "generate.baselines.sds_min_step", "generate.baselines.sds_max_step", "generate.baselines.weight_lambda"),
    lambda cfg: FreshNoise(), kernel_params.sds_params, row_sections=("generate.baselines",)))
register_method(MethodSpec("ism", get_kernel("ism"), ("generate.baselines.*",), _fixed_unused,
                           kernel_params.ism_params, row_sections=("generate.baselines",)))
