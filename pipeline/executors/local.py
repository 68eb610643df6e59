"""In-process executor: one item at a time, in order (debugging, tests, a single GPU).

An exception from `fn` becomes a failed Outcome (the run goes on). Application errors are not
retried by default: they are usually deterministic (a bad prompt, a NaN the guard gave up on);
`retry_exceptions=True` retries them with the same bounded attempts and backoff as Ray. There is
no per-asset timeout in-process (nothing can be killed safely); use the Ray executor for that.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Iterator

from common import deadline
from pipeline.executors import Outcome, format_error

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, max_attempts: int = 1, backoff_s: float = 0.0, retry_exceptions: bool = False,
                 timeout_s: float = 0.0):
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts!r}: must be >= 1")
        if timeout_s < 0:
            raise ValueError(f"timeout_s={timeout_s!r}: must be >= 0 (0 = no per-asset limit)")
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.retry_exceptions = retry_exceptions
        self._running = 0

    def running(self) -> int:
        return self._running

    def map(self, items: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        for item in items:
            if deadline.stop_requested():  # the run was asked to stop: dispatch nothing more
                return
            attempt = 0
            while True:
                attempt += 1
                t0 = time.perf_counter()
                self._running = 1
                try:
                    with deadline.limit(self.timeout_s):
                        value = fn(item)
                except Exception as e:  # noqa: BLE001 - recorded as the asset's failure reason
                    self._running = 0
                    wall = time.perf_counter() - t0
                    if (self.retry_exceptions and attempt < self.max_attempts
                            and not isinstance(e, (deadline.AssetTimeout, deadline.RunInterrupted))):
                        log.warning("attempt %d failed (%s); retrying", attempt, format_error(e))
                        time.sleep(self.backoff_s * 2 ** (attempt - 1))
                        continue
                    log.debug("item failed", exc_info=True)
                    yield Outcome(item=item, ok=False, error=format_error(e), attempts=attempt,
                                  wall_s=wall, worker="local")
                    break
                self._running = 0
                yield Outcome(item=item, ok=True, value=value, attempts=attempt,
                              wall_s=time.perf_counter() - t0, worker="local")
                break

    def close(self) -> None:
        self._running = 0
