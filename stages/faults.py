"""Named code faults for measuring the nightly regression gate (benchmarks/nightly_power.py).

Why this exists: to know whether `sctd3d report` catches a real regression, the benchmark injects
realistic bugs and checks that the nightly flags them. Faults that a config cannot express (a wrong
sign, a renderer bug, crashing assets) are switched on here, by name, through the environment:

    SCTD3D_FAULT=distill_sign sctd3d run ...       (comma-separated for several)

Only benchmarks/nightly_power.py and tests/test_nightly_power.py switch faults on; no shipped
config or code path does, and with none on every hook below is the identity. An unknown name is an
error (a typo must not silently measure the clean pipeline): one line, before any asset runs.

The seam (docs/INTERFACES.md, "Test and benchmark seams"): the set of active faults is process
state, read ONCE per process: from $SCTD3D_FAULT at the first `active()` (a `sctd3d run` checks it
as it starts; each worker process reads its own copy, inherited from the driver), or set in this
process by `injected(...)` (tests, the benchmark's in-process re-scoring). The hooks never read
the environment: a hook inside a loop costs one set lookup.

Registry (name -> what breaks, where the one-line hook sits):
- distill_sign:      the classifier-free guidance term of the distillation target enters with the
                     wrong sign, e_w = e_neg - w (e_cond - e_neg) (stages/priors/guidance.py,
                     make_guided_eps_from_config; kernels/distill.py stays pure).
- background_twice:  the evaluation renderer composites the background a second time,
                     rgb + (1 - alpha) * bg (stages/render.py, render_views).
- fail_half:         the render stage raises for about half the assets (those whose prompt hash is
                     odd), so they end `failed` (stages/render.py, render_asset).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

from torch import Tensor

from common.errors import UserError

log = logging.getLogger(__name__)

ENV = "SCTD3D_FAULT"
FAULTS: dict[str, str] = {
    "distill_sign": "wrong sign of the guidance term of the distillation target",
    "background_twice": "evaluation renderer composites the background twice",
    "fail_half": "the render stage fails for about half the assets",
}


_WARNED: set[str] = set()
_ACTIVE: frozenset[str] | None = None   # None: not read yet (the environment is read once)
_LOCK = threading.Lock()


class FaultError(UserError, ValueError):
    """SCTD3D_FAULT (or `injected`) names a fault that is not in the registry."""


class InjectedFault(RuntimeError):
    """Raised by the `fail_half` fault (an asset failure the pipeline must record)."""


def _checked(names: Iterable[str], source: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in names if n.strip())
    unknown = sorted(names - FAULTS.keys())
    if unknown:
        raise FaultError(f"{source}: unknown fault(s) {unknown}; known: {sorted(FAULTS)} "
                         f"(unset {ENV} for the clean pipeline)")
    return names


def active() -> frozenset[str]:
    """The faults on in this process: $SCTD3D_FAULT read at the first call (empty when unset:
    production), or the set of an enclosing `injected(...)`."""
    global _ACTIVE
    if _ACTIVE is None:
        with _LOCK:
            if _ACTIVE is None:
                raw = os.environ.get(ENV, "")
                _ACTIVE = _checked(raw.split(","), f"{ENV}={raw!r}")
    return _ACTIVE


@contextmanager
def injected(*names: str) -> Iterator[frozenset[str]]:
    """Exactly the faults `names` are on in this process for the block (none: the clean pipeline,
    whatever $SCTD3D_FAULT says); the previous set comes back after it. For in-process callers
    (tests, benchmarks/nightly_power.py's re-scoring); a subprocess gets them through $SCTD3D_FAULT."""
    global _ACTIVE
    on = _checked(names, "stages.faults.injected")
    with _LOCK:
        before, _ACTIVE = _ACTIVE, on
    try:
        yield on
    finally:
        with _LOCK:
            _ACTIVE = before


def is_on(name: str) -> bool:
    if name not in FAULTS:
        raise FaultError(f"fault {name!r} is not in stages.faults.FAULTS")
    on = name in active()
    if on and name not in _WARNED:
        _WARNED.add(name)
        log.warning("injected fault %s is ON (%s): benchmark use only", name, FAULTS[name])
    return on


def guidance_sign() -> float:
    """-1.0 under `distill_sign` (flips the guidance term), else 1.0."""
    return -1.0 if is_on("distill_sign") else 1.0


def composite_background(rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Under `background_twice`: rgb + (1 - alpha) * bg, a second compositing; else rgb unchanged."""
    if not is_on("background_twice"):
        return rgb
    return rgb + (1.0 - alpha) * background.to(rgb.dtype).view(*([1] * (rgb.dim() - 1)), -1)


def maybe_fail(prompt: str) -> None:
    """Under `fail_half`: raise InjectedFault for prompts whose sha256 is odd (about half)."""
    if is_on("fail_half") and fails_under_fail_half(prompt):
        raise InjectedFault(f"injected fault fail_half: render stage fails for {prompt!r}")


def fails_under_fail_half(prompt: str) -> bool:
    """Whether `fail_half` fails this prompt (for the benchmark's bookkeeping)."""
    return hashlib.sha256(prompt.encode("utf-8")).digest()[-1] % 2 == 1


__all__ = ["ENV", "FAULTS", "FaultError", "InjectedFault", "active", "injected", "is_on", "guidance_sign",
           "composite_background", "maybe_fail", "fails_under_fail_half"]
