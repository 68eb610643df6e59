"""In-process executor: one item at a time, in order (debugging, tests, a single GPU).

An exception from `fn` becomes a failed Outcome (the run goes on). Retries follow the shared
`RetryPolicy` (application errors only with `retry_exceptions=True`). The per-asset timeout is
`common.deadline.limit` (checked by the generation loop). The `startup` call runs in `start()`:
this process is the worker (a run passes `pipeline.workers.start_worker`: the prior's device check
and the generation seam, docs/INTERFACES.md "Test and benchmark seams").
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from common import deadline
from pipeline.executors import Outcome, RetryPolicy, format_error

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, max_attempts: int = 1, backoff_s: float = 0.0, retry_exceptions: bool = False,
                 timeout_s: float = 0.0, startup: Optional[Callable[[], Any]] = None):
        if timeout_s < 0:
            raise ValueError(f"timeout_s={timeout_s!r}: must be >= 0 (0 = no per-asset limit)")
        self.retry = RetryPolicy(max_attempts, backoff_s, retry_exceptions)
        self.timeout_s = timeout_s
        self.startup = startup
        self._started = False
        self._running = 0

    def start(self) -> None:
        """Run the start-up check here (the worker is this process); once."""
        if not self._started and self.startup is not None:
            self.startup()
        self._started = True

    def running(self) -> int:
        return self._running

    def map(self, items: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        for item in items:
            if deadline.stop_requested():  # the run was asked to stop: dispatch nothing more
                return
            self.start()
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
                    if self.retry.retries(attempt, e):
                        log.warning("attempt %d failed (%s); retrying", attempt, format_error(e))
                        time.sleep(self.retry.delay(attempt))
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
