"""Distillation methods by name: `generate.method` -> a `MethodSpec`, the one list of valid methods.

One module per method: `sctd.py`, `cds.py`, `gcs.py`, `sds.py`, `ism.py`; each builds its params
from the config, names the config keys it reads (its asset ids hash them) and registers its spec.
`base.py` holds what a method is (`MethodSpec`), its per-asset state (`MethodState`: noise, buffers,
saved in the checkpoint) and the registry (`METHODS`, a `common.plugins.Registry`).
A new method: one module that calls `register_method(MethodSpec(...))` (a plugin file:
common/plugins.py: `SCTD3D_PLUGINS` or `pipeline.plugins`; tests/plugins/half_sds_method.py is one,
tests/plugins/ema_sds_method.py one with its own per-asset state).
"""

from __future__ import annotations

from stages.methods.base import (METHODS, FixedNoise, FreshNoise, MethodContext, MethodSpec, MethodState,
                                 NoiseState, get_method, method_names, register_method)
from stages.methods import sctd, cds, gcs, sds, ism  # noqa: F401,I001  (the shipped methods register here)

__all__ = ["METHODS", "FixedNoise", "FreshNoise", "MethodContext", "MethodSpec", "MethodState", "NoiseState",
           "get_method", "method_names", "register_method"]
