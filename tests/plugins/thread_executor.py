"""A test plugin: an executor that runs each item on one background worker thread.

Registered from this file alone (`--set pipeline.plugins=[tests/plugins/thread_executor.py]`
`--executor threads`); no production file names it. It follows the shared retry rules and runs the
run's start-up check in its worker thread, as every executor must.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from pipeline.executors import ExecutorSpec, Outcome, RetryPolicy, format_error, register_executor

STARTED: list[str] = []   # names of the worker threads that ran a start-up check (for the test)
RAN: list[str] = []       # the thread each item ran on


class ThreadExecutor:
    def __init__(self, max_attempts: int = 1, backoff_s: float = 0.0, label: str = "t",
                 startup: Optional[Callable[[], Any]] = None) -> None:
        self.retry = RetryPolicy(max_attempts, backoff_s)
        self.label, self.startup = label, startup
        self._busy = 0
        self._jobs: "queue.Queue[Any]" = queue.Queue()
        self._done: "queue.Queue[Any]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    def _work(self) -> None:
        if self.startup is not None:
            try:
                self.startup()
            except Exception as e:  # noqa: BLE001 - handed to the driver
                self._done.put(("startup", e))
                return
        STARTED.append(threading.current_thread().name)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, item = job
            RAN.append(threading.current_thread().name)
            t0 = time.perf_counter()
            try:
                self._done.put((True, fn(item), time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - the item's failure
                self._done.put((False, e, time.perf_counter() - t0))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"{self.label}-worker", daemon=True)
            self._thread.start()

    def running(self) -> int:
        return self._busy

    def map(self, items: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        self.start()
        for item in items:
            attempt = 0
            while True:
                attempt += 1
                self._busy = 1
                self._jobs.put((fn, item))
                got = self._done.get()
                self._busy = 0
                if got[0] == "startup":
                    raise RuntimeError(f"thread worker failed its start-up check: {got[1]}")
                ok, value, wall = got
                if ok:
                    yield Outcome(item, True, value, attempts=attempt, wall_s=wall,
                                  worker=f"thread:{self._thread.name}")
                    break
                if self.retry.retries(attempt, value):
                    time.sleep(self.retry.delay(attempt))
                    continue
                yield Outcome(item, False, error=format_error(value), attempts=attempt, wall_s=wall,
                              worker=f"thread:{self._thread.name}")
                break

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=60)
            self._thread = None


register_executor(ExecutorSpec(
    "threads", lambda: ThreadExecutor,
    lambda p: {"max_attempts": p.max_attempts, "backoff_s": p.backoff_s, "label": "plugin"},
    "one background worker thread (a test plugin)"))
