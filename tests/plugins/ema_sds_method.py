"""A test plugin: a stateful distillation method registered from this file alone.

`ema_sds` is SDS whose applied gradient is a per-asset exponential moving average of the SDS
gradient (momentum on the latent gradient). The EMA buffer is the method's own state
(`stages.methods.MethodState`): created per asset, updated every iteration, saved in the checkpoint
(`method/ema`) and restored on resume or NaN rollback; the generation loop never names it:
`--set pipeline.plugins=[tests/plugins/ema_sds_method.py] --set generate.method=ema_sds`.
"""

from __future__ import annotations

from typing import Optional

import torch

from kernels.distill import get_method as get_kernel
from stages.methods import FreshNoise, MethodSpec, MethodState, get_method, register_method

BETA = 0.7                      # ema <- BETA * ema + (1 - BETA) * grad
CRASH_AT: Optional[int] = None  # set by a test: that iteration's update raises (a worker that dies mid-asset)


class EMAState(MethodState):
    """Fresh noise (SDS's) plus the EMA of the gradient, one buffer per asset."""

    def __init__(self, ctx) -> None:
        super().__init__(FreshNoise(), ctx)
        self.ema = torch.zeros(ctx.latent_shape, device=ctx.device)

    def update(self, it, z, ts, grad, terms):
        if CRASH_AT is not None and it == CRASH_AT:
            raise RuntimeError(f"simulated crash at iteration {it}")
        self.ema.mul_(BETA).add_(grad.detach().float(), alpha=1.0 - BETA)
        terms["ema_norm"] = self.ema.norm()
        return self.ema.to(grad.dtype).clone()

    def state_dict(self):
        return {**super().state_dict(), "ema": self.ema}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.ema = d["ema"]


_SDS = get_method("sds")
SPEC = register_method(MethodSpec(
    "ema_sds", get_kernel("sds"), config_keys=_SDS.config_keys, noise=lambda cfg: FreshNoise(),
    params=_SDS.params, state=lambda cfg, ctx: EMAState(ctx)))
