"""Per-asset time limit and run stop request for in-process execution (the local executor).

Why cooperative: nothing in-process can be killed safely, so long stages call `check()` between
iterations and an asset over its limit stops there with a clear reason, keeping its checkpoints for
a later attempt. The Ray executor enforces the same `pipeline.timeout_s` by killing its worker.
A stop request (the driver got SIGINT/SIGTERM, see pipeline.run) stops the running asset the same
way, at its next iteration, with `RunInterrupted`; the asset gets no record and resumes on the re-run.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

# (deadline on _clock(), limit in seconds) of the asset running in this context
_clock = time.monotonic  # module-level so tests can substitute a fake clock for this module only
_LIMIT: ContextVar[Optional[tuple[float, float]]] = ContextVar("sctd3d_asset_deadline", default=None)


_STOP = threading.Event()
_STOP_REASON = {"why": ""}


class RunInterrupted(Exception):
    """The run was asked to stop (a signal): not a property of the asset, never recorded as failed."""


def request_stop(why: str) -> None:
    """Ask every asset running in this process to stop at its next `check()` (signal-safe)."""
    _STOP_REASON["why"] = why
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()
    _STOP_REASON["why"] = ""


def stop_requested() -> str:
    """The reason a stop was requested ('' when none)."""
    return _STOP_REASON["why"] if _STOP.is_set() else ""


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
    """Raise RunInterrupted after a stop request, AssetTimeout if the current asset's limit has
    passed (no-op outside `limit`)."""
    if _STOP.is_set():
        raise RunInterrupted(f"interrupted ({_STOP_REASON['why']}) at {where}")
    cur = _LIMIT.get()
    if cur is not None and _clock() > cur[0]:
        raise AssetTimeout(f"timeout: exceeded {cur[1]:g} s per-asset limit (pipeline.timeout_s) at {where}")
