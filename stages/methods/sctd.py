"""SCTD (SegmentDreamer): segmented consistency trajectory distillation, the method this project ships.

Reads `generate.sctd.*` (its params, schedule and fixed noise) and `prior.guidance_scale` (the
guidance's key, hashed for every method); a prompt row may set `generate.sctd.*`. Its gradient and
segmented sampler are `kernels.distill.sctd_grad` / the "sctd" kernel; docs/METHOD.md has the
numbers. CDS and GCS (cds.py, gcs.py) share its params and fixed noise.
"""

from __future__ import annotations

from kernels.distill import SCTDParams, get_method as get_kernel
from stages.methods.base import FixedNoise, MethodSpec, NoiseState, register_method

CONFIG_KEYS = ("generate.sctd.*",)   # what its asset ids hash (with the loop's and the prior's)
ROW_SECTIONS = ("generate.sctd",)


def consistency_params(cfg) -> SCTDParams:
    """Numbers of the consistency gradients (SCTD, CDS, GCS) of `generate.sctd`."""
    s = cfg.generate.sctd
    return SCTDParams(guidance_scale=cfg.prior.guidance_scale, weight_lambda=s.weight_lambda,
                      consistency_approx=s.consistency_approx, cross_term=s.cross_term)


def fixed_noise(cfg) -> NoiseState:
    """eps_star, drawn once per asset with `generate.sctd.eps_star_offset`."""
    return FixedNoise(cfg.generate.sctd.eps_star_offset)


SPEC = register_method(MethodSpec("sctd", get_kernel("sctd"), CONFIG_KEYS, fixed_noise, consistency_params,
                                  row_sections=ROW_SECTIONS))
