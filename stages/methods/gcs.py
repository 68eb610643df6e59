"""GCS (guided consistency sampling): SCTD's formula over one segment spanning the trajectory.
Reads what SCTD reads (`generate.sctd.*`: sctd.py's params and fixed noise)."""

from __future__ import annotations

from kernels.distill import get_method as get_kernel
from stages.methods.base import MethodSpec, register_method
from stages.methods.sctd import CONFIG_KEYS, ROW_SECTIONS, consistency_params, fixed_noise

SPEC = register_method(MethodSpec("gcs", get_kernel("gcs"), CONFIG_KEYS, fixed_noise, consistency_params,
                                  row_sections=ROW_SECTIONS))
