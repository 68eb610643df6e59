"""A test plugin: a distillation method registered from this file alone.

`half_sds` is SDS at half weight with its own params class (no SCTDParams), its own sampler over a
fixed timestep band, fresh noise every iteration, and the config keys it reads (the SDS range):
`--set pipeline.plugins=[tests/plugins/half_sds_method.py] --set generate.method=half_sds`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels.ddim import sample_uniform_timestep
from kernels.distill import DistillMethod, sds_grad
from stages.methods import FreshNoise, MethodSpec, register_method

CALLS: list[int] = []   # the timestep of each gradient call (for the test)


@dataclass
class HalfSDSParams:
    baseline_lambda: float = 0.5   # what sds_grad reads: w(t) = lambda (1 - a_t)
    lo: int = 200
    hi: int = 600


def _grad(z, ts, alphas, eps, noise, p: HalfSDSParams):
    CALLS.append(ts.t)
    return sds_grad(z, ts, alphas, eps, noise, p)


def _sample(it, sched, gen):
    return sample_uniform_timestep(sched.lo, sched.hi, gen)


register_method(MethodSpec(
    "half_sds", DistillMethod("half_sds", _grad, _sample, fixed_noise=False),
    config_keys=("generate.baselines.sds_min_step",),
    noise=lambda cfg: FreshNoise(),
    params=lambda cfg: HalfSDSParams(),
    schedule=lambda cfg: HalfSDSParams(lo=max(cfg.generate.baselines.sds_min_step, 200))))
