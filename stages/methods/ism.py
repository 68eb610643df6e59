"""ISM (interval score matching, LucidDreamer) baseline: DDIM inversion from s to t, then the
guided prediction at t. Reads `generate.baselines.*`; a prompt row may set `generate.baselines.*`."""

from __future__ import annotations

from kernels.distill import ISMParams, get_method as get_kernel
from stages.methods.base import FixedNoise, MethodSpec, NoiseState, register_method

CONFIG_KEYS = ("generate.baselines.*",)


def ism_params(cfg) -> ISMParams:
    """ISM's numbers of `generate.baselines`."""
    b = cfg.generate.baselines
    return ISMParams(baseline_lambda=b.weight_lambda, ism_delta_t=b.ism_delta_t, ism_delta_s=b.ism_delta_s)


def unused_fixed_noise(cfg) -> NoiseState:
    """ISM ignores the noise, but draws eps_star (the RNG stream, hence its assets, depend on it)."""
    return FixedNoise(0.1)


SPEC = register_method(MethodSpec("ism", get_kernel("ism"), CONFIG_KEYS, unused_fixed_noise, ism_params,
                                  row_sections=("generate.baselines",)))
