"""SDS (DreamFusion) baseline: fresh noise every iteration, t ~ U[sds_min_step, sds_max_step).

Reads `generate.baselines.{sds_min_step, sds_max_step, weight_lambda}` (nothing of `generate.sctd`:
its asset ids do not move with SCTD's settings); a prompt row may set `generate.baselines.*`."""

from __future__ import annotations

from kernels.distill import SDSParams, get_method as get_kernel
from stages.methods.base import FreshNoise, MethodSpec, register_method

CONFIG_KEYS = ("generate.baselines.sds_min_step", "generate.baselines.sds_max_step",
               "generate.baselines.weight_lambda")


def sds_params(cfg) -> SDSParams:
    """SDS's weight of `generate.baselines`."""
    return SDSParams(baseline_lambda=cfg.generate.baselines.weight_lambda)


SPEC = register_method(MethodSpec("sds", get_kernel("sds"), CONFIG_KEYS, lambda cfg: FreshNoise(), sds_params,
                                  row_sections=("generate.baselines",)))
