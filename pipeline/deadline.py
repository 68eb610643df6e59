"""Per-asset time limit for in-process execution (the local executor).

Why cooperative: nothing in-process can be killed safely, so long stages call `check()` between
iterations and an asset over its limit stops there with a clear reason, keeping its checkpoints for
a later attempt. The Ray executor enforces the same `pipeline.timeout_s` by killing its worker.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

# (deadline on _clock(), limit in seconds) of the asset running in this context
_clock = time.monotonic  # module-level so tests can substitute a fake clock for this module only
_LIMIT: ContextVar[Optional[tuple[float, float]]] = ContextVar("sctd3d_asset_deadline", default=None)


class AssetTimeout(TimeoutError):
    """An asset ran past `pipeline.timeout_s`; not retried (a timeout is a property of the asset)."""


@contextmanager
def limit(seconds: float) -> Iterator[None]:
    """Run the body under a per-asset limit of `seconds` (0 or less: no limit)."""
    token = _LIMIT.set((_clock() + seconds, seconds) if seconds > 0 else None)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def check(where: str) -> None:
    """Raise AssetTimeout if the current asset's limit has passed (no-op outside `limit`)."""
    cur = _LIMIT.get()
    if cur is not None and _clock() > cur[0]:
        raise AssetTimeout(f"timeout: exceeded {cur[1]:g} s per-asset limit (pipeline.timeout_s) at {where}")
