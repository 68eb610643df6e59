"""Ray executor: a pool of long-lived actors fed one item at a time from a driver-side queue.

Why actors and a dynamic queue: each actor keeps its process (and its loaded prior) warm across
assets, holds one GPU (`num_gpus=1`; CPU actors for the toy world), and takes its next asset only
when it finishes the current one, so no asset waits behind a slow actor and every GPU stays busy.

Failures:
- worker death / preemption (actor or node died, OOM kill): the actor is replaced and the item is
  requeued with exponential backoff, up to `max_attempts` starts; the final reason is recorded.
- per-asset timeout: the actor is killed and replaced; the item fails with a timeout reason (not
  retried: a timeout is usually a property of the asset, and retrying would burn GPU hours).
- an exception raised by `fn`: a failed Outcome with that exception (retried only when
  `retry_exceptions=True`).
Only `fn` (once, via the object store), the small items and the small results cross processes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import ray
import ray.exceptions as rex

from pipeline.executors import Outcome, format_error

log = logging.getLogger(__name__)

# Errors that mean "the worker (or its node) went away", not "the asset is bad".
_DEATH_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(rex, n) for n in ("RayActorError", "WorkerCrashedError", "NodeDiedError",
                              "OutOfMemoryError", "ObjectLostError", "OwnerDiedError",
                              "LocalRayletDiedError") if hasattr(rex, n))


@ray.remote(max_restarts=0, max_concurrency=1)
class AssetWorker:
    """Runs `fn(item)` for one item at a time in its own process."""

    def ready(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def run(self, fn: Callable[[Any], Any], item: Any) -> Any:
        return fn(item)


@dataclass
class _Task:
    index: int
    item: Any
    attempts: int = 0
    not_before: float = 0.0
    deadline: float = float("inf")
    started: float = 0.0
    errors: list = field(default_factory=list)


@dataclass
class _Slot:
    actor: Any
    name: str = ""
    task: Optional[_Task] = None
    ref: Any = None          # in-flight ref (ready() while starting, run() while busy)
    starting: bool = True


class RayExecutor:
    def __init__(self, address: Optional[str] = None, num_workers: Optional[int] = None,
                 gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, max_attempts: int = 3,
                 backoff_s: float = 5.0, timeout_s: float = 0.0, retry_exceptions: bool = False,
                 num_cpus: Optional[int] = None, ray_init_kwargs: Optional[dict] = None):
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts!r}: must be >= 1")
        self.address = address
        self.num_workers = num_workers or 0
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.retry_exceptions = retry_exceptions
        self.num_cpus = num_cpus
        self.ray_init_kwargs = ray_init_kwargs or {}
        self._started_ray = False
        self._slots: list[_Slot] = []
        self.restarts = 0    # actors replaced after a death or timeout (for tests / logs)

    # ------------------------------------------------------------------ cluster
    def _ensure_ray(self) -> None:
        if ray.is_initialized():
            return
        kw = dict(include_dashboard=False, log_to_driver=True)
        kw.update(self.ray_init_kwargs)
        if self.address:
            ray.init(address=self.address, **kw)
        else:
            ray.init(num_cpus=self.num_cpus or os.cpu_count(), **kw)
            self._started_ray = True

    def _pool_size(self, n_items: int) -> int:
        n = self.num_workers
        if not n:
            res = ray.cluster_resources()
            if self.gpus_per_worker > 0:
                n = int(res.get("GPU", 0) // self.gpus_per_worker)
                what = f"GPUs (need {self.gpus_per_worker} per worker)"
            else:
                n = int(res.get("CPU", 0) // max(self.cpus_per_worker, 1e-9))
                what = f"CPUs (need {self.cpus_per_worker} per worker)"
            if n < 1:
                raise RuntimeError(f"the Ray cluster has no free {what}: resources {res}. Pass "
                                   f"--num-workers N to start N workers and let the autoscaler add "
                                   f"nodes for them.")
        return max(1, min(n, n_items))

    def _new_actor(self) -> _Slot:
        actor = AssetWorker.options(num_gpus=self.gpus_per_worker,
                                    num_cpus=self.cpus_per_worker).remote()
        slot = _Slot(actor=actor)
        slot.ref = actor.ready.remote()
        return slot

    def _replace(self, i: int) -> None:
        try:
            ray.kill(self._slots[i].actor, no_restart=True)
        except Exception as e:  # noqa: BLE001 - already dead is fine; anything else is logged
            log.debug("ray.kill of a dead actor: %s", e)
        self._slots[i] = self._new_actor()
        self.restarts += 1

    def running(self) -> int:
        return sum(1 for s in self._slots if s.task is not None)

    # ------------------------------------------------------------------ map
    def map(self, items: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        tasks = [_Task(i, it) for i, it in enumerate(items)]
        if not tasks:
            return
        self._ensure_ray()
        fn_ref = ray.put(fn)
        queue: deque[_Task] = deque(tasks)
        self._slots = [self._new_actor() for _ in range(self._pool_size(len(tasks)))]
        remaining = len(tasks)
        try:
            while remaining:
                now = time.monotonic()
                # dispatch to idle actors: the first queued task whose backoff has passed
                for slot in self._slots:
                    if slot.starting or slot.task is not None:
                        continue
                    task = next((t for t in queue if t.not_before <= now), None)
                    if task is None:
                        break
                    queue.remove(task)
                    task.attempts += 1
                    task.started = now
                    task.deadline = now + self.timeout_s if self.timeout_s > 0 else float("inf")
                    slot.task = task
                    slot.ref = slot.actor.run.remote(fn_ref, task.item)
                refs = [s.ref for s in self._slots if s.ref is not None]
                wake = [t.deadline for t in (s.task for s in self._slots) if t is not None]
                wake += [t.not_before for t in queue]
                wait_s = max(0.01, min([1.0] + [w - now for w in wake]))
                if refs:
                    done, _ = ray.wait(refs, num_returns=1, timeout=wait_s)
                else:  # every queued task is in backoff
                    done = []
                    time.sleep(wait_s)
                for ref in done:
                    i = next(k for k, s in enumerate(self._slots) if s.ref == ref)
                    out = self._collect(i, ref, queue)
                    if out is not None:
                        remaining -= 1
                        yield out
                now = time.monotonic()
                for i, slot in enumerate(self._slots):
                    t = slot.task
                    if t is not None and now > t.deadline:
                        log.warning("asset #%d exceeded its %.0f s timeout on %s; killing the worker",
                                    t.index, self.timeout_s, slot.name)
                        self._replace(i)
                        remaining -= 1
                        yield Outcome(item=t.item, ok=False, attempts=t.attempts,
                                      error=f"timeout: exceeded {self.timeout_s:.0f} s per-asset limit",
                                      wall_s=now - t.started, worker=slot.name)
        finally:
            self.close()

    def _collect(self, i: int, ref: Any, queue: deque) -> Optional[Outcome]:
        slot = self._slots[i]
        task = slot.task
        try:
            value = ray.get(ref)
        except rex.RayTaskError as e:
            # fn raised: the asset's own failure (its worker is fine)
            slot.ref, slot.task = None, None
            cause = e.cause if getattr(e, "cause", None) is not None else e
            if task is None:  # ready() itself raised: treat as a broken worker
                log.error("worker failed to start: %s", format_error(cause))
                self._replace(i)
                return None
            if self.retry_exceptions and task.attempts < self.max_attempts:
                self._requeue(task, format_error(cause), queue)
                return None
            return Outcome(item=task.item, ok=False, error=format_error(cause), attempts=task.attempts,
                           wall_s=time.monotonic() - task.started, worker=slot.name)
        except _DEATH_ERRORS as e:
            reason = f"worker died ({format_error(e)})"
            log.warning("%s on %s", reason, slot.name or "a starting worker")
            self._replace(i)
            if task is None:
                return None
            if task.attempts < self.max_attempts:
                self._requeue(task, reason, queue)
                return None
            task.errors.append(reason)
            return Outcome(item=task.item, ok=False, attempts=task.attempts,
                           error=f"gave up after {task.attempts} attempts; last: {reason}",
                           wall_s=time.monotonic() - task.started, worker=slot.name)
        if slot.starting:
            slot.starting, slot.name, slot.ref = False, str(value), None
            return None
        slot.ref, slot.task = None, None
        return Outcome(item=task.item, ok=True, value=value, attempts=task.attempts,
                       wall_s=time.monotonic() - task.started, worker=slot.name)

    def _requeue(self, task: _Task, reason: str, queue: deque) -> None:
        task.errors.append(reason)
        delay = self.backoff_s * 2 ** (task.attempts - 1)
        task.not_before = time.monotonic() + delay
        log.warning("retrying asset #%d in %.1f s (attempt %d of %d failed: %s)", task.index, delay,
                    task.attempts, self.max_attempts, reason)
        queue.appendleft(task)

    def close(self) -> None:
        for slot in self._slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception as e:  # noqa: BLE001 - a dead actor cannot be killed twice
                log.debug("ray.kill: %s", e)
        self._slots = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False
