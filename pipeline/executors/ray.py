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
- the run cannot start (ExecutorError, one line, nothing retried): `address` unreachable within
  `connect_timeout_s`; the autoscaler reports a worker's request infeasible (no node type in its
  cluster config can hold it: said at once, naming the request); no actor started and no node
  launched for `worker_start_timeout_s` (no autoscaler, or one that launches nothing); an actor's
  `startup` check failed (it runs in every actor before its first item, e.g. the prior's CUDA
  requirement, never on the driver).
Autoscaling clusters (`ray up ray_cluster.yaml`, `min_workers: 0`): the pending worker actors are
the demand the autoscaler launches GPU nodes for; while it launches (nodes requested or starting,
see ray_autoscaler.py) the run waits however long that takes, and assets start on each worker as
its node comes up. Without --num-workers the run requests min(assets, `max_workers`) workers there.
Only `fn` (once, via the object store), the small items and the small results cross processes.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import ray
import ray.exceptions as rex

from common import deadline
from pipeline.executors import ExecutorError, Outcome, RetryPolicy, WorkerStartupError, format_error
from pipeline.executors.ray_autoscaler import ScalingView, read_scaling

log = logging.getLogger(__name__)

# Errors that mean "the worker (or its node) went away", not "the asset is bad".
_DEATH_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(rex, n) for n in ("RayActorError", "WorkerCrashedError", "NodeDiedError",
                              "OutOfMemoryError", "ObjectLostError", "OwnerDiedError",
                              "LocalRayletDiedError") if hasattr(rex, n))


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


_CONNECT_FIX = ("check the address (the head node's IP:6379, 'auto' on a cluster node), that the "
                "cluster is up (ray status) and reachable from here; pipeline.connect_timeout_s sets "
                "the wait")

# The connect probe's child: import Ray (not counted in the timeout: it is slow on a loaded
# machine), say so, connect, disconnect.
_PROBE_CODE = """
import sys
import ray
print("imported", flush=True)
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, logging_level="ERROR")
ray.shutdown()
print("connected", flush=True)
"""
_PROBE_IMPORT_S = 300.0   # bound on the child's `import ray` (a broken environment must not hang)


def _probe(addr: str, timeout_s: float) -> None:
    """Connect to `addr` once in a child process; ExecutorError (one line) unless it connected within
    `timeout_s` of having imported Ray. A child that does not answer is killed with its process
    group, so nothing of the attempt outlives this call (see RayExecutor._connect)."""
    with tempfile.TemporaryFile(mode="w+") as err:  # a file, not a pipe: Ray's logging cannot block it
        proc = subprocess.Popen([sys.executable, "-c", _PROBE_CODE, addr], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, bufsize=0, start_new_session=True)
        lines: list[str] = []
        killed = False
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                end = time.monotonic() + _PROBE_IMPORT_S
                buf = b""
                while "connected" not in lines:
                    left = end - time.monotonic()
                    if left <= 0 or not sel.select(timeout=left):
                        break
                    data = os.read(proc.stdout.fileno(), 4096)  # unbuffered: no line waits in a buffer
                    if not data:  # the child exited
                        break
                    buf += data
                    *done, buf = buf.split(b"\n")
                    for line in done:
                        lines.append(line.decode(errors="replace").strip())
                        if lines[-1] == "imported":
                            end = time.monotonic() + timeout_s
        finally:
            if "connected" in lines:  # it disconnects and exits by itself
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
                killed = "connected" not in lines
            proc.wait()
            proc.stdout.close()
        if "connected" in lines:
            return
        if killed and "imported" in lines:
            raise ExecutorError(f"no Ray cluster answered at --address {addr!r} within {timeout_s:.0f} s; "
                                f"{_CONNECT_FIX}")
        if killed:
            raise ExecutorError(f"the Ray connect probe ({sys.executable}) did not import ray within "
                                f"{_PROBE_IMPORT_S:.0f} s; check this machine's Python environment")
        err.seek(0)
        last = [ln.strip() for ln in err.read().splitlines() if ln.strip()]
        why = last[-1][:500] if last else f"exit status {proc.returncode}"
        raise ExecutorError(f"cannot connect to the Ray cluster at --address {addr!r} ({why}); {_CONNECT_FIX}")


@ray.remote(max_restarts=0, max_concurrency=1)
class AssetWorker:
    """Runs `fn(item)` for one item at a time in its own process."""

    def ready(self, startup: Optional[Callable[[], Any]] = None) -> str:
        name = f"{socket.gethostname()}:{os.getpid()}"
        if startup is not None:
            try:
                startup()
            except Exception as e:  # noqa: BLE001 - reported to the driver as this worker's failure
                raise WorkerStartupError(f"worker {name}: {format_error(e)}") from None
        return name

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
    since: float = field(default_factory=time.monotonic)   # when this actor was requested


class RayExecutor:
    def __init__(self, address: Optional[str] = None, num_workers: Optional[int] = None,
                 gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, max_attempts: int = 3,
                 backoff_s: float = 5.0, timeout_s: float = 0.0, retry_exceptions: bool = False,
                 num_cpus: Optional[int] = None, ray_init_kwargs: Optional[dict] = None,
                 startup: Optional[Callable[[], Any]] = None, worker_start_timeout_s: float = 600.0,
                 connect_timeout_s: float = 30.0, max_workers: int = 64):
        self.retry = RetryPolicy(max_attempts, backoff_s, retry_exceptions)  # the shared retry rules
        if worker_start_timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError(f"worker_start_timeout_s={worker_start_timeout_s!r}, connect_timeout_s="
                             f"{connect_timeout_s!r}: must be > 0")
        if max_workers < 1:
            raise ValueError(f"max_workers={max_workers!r}: must be >= 1")
        self.max_workers = max_workers
        self.startup = startup
        self.worker_start_timeout_s = worker_start_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._startup_ref: Any = None
        self._pending_warned = False
        self._no_worker_since: Optional[float] = None
        self._scaling_view = ScalingView()
        self._scaling_read_at = -1e9
        self._scaling_said = ""
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
    def start(self) -> None:
        """Connect to (or start) the Ray cluster; `map` starts the worker actors and their `startup`
        check. ray.init sets its own SIGTERM handler: a caller with its own reinstalls it after this."""
        self._ensure_ray()

    def _ensure_ray(self) -> None:
        if ray.is_initialized():
            return
        kw = dict(include_dashboard=False, log_to_driver=True)
        kw.update(self.ray_init_kwargs)
        if self.address:
            self._connect(kw)
        else:
            ray.init(num_cpus=self.num_cpus or os.cpu_count(), **kw)
            self._started_ray = True

    def _connect(self, kw: dict) -> None:
        """ray.init(address=...) within `connect_timeout_s`, else ExecutorError.

        Why a probe process: against an address where nothing answers (a silent port, a firewall
        that swallows the handshake), ray.init retries the GCS forever. An in-process attempt cannot
        be abandoned safely: its C++ GCS client threads keep retrying with the GIL released, and
        when the interpreter exits they run into the C++ static destructors (std::bad_alloc ->
        std::terminate -> SIGABRT, exit -6 after the right error line). So the first attempt runs
        in a child process (`_probe`) that is killed, with everything it started, when it does not
        answer in time; only after it connected does this process call ray.init (in a thread:
        ray.init off the main thread leaves the run's own SIGTERM handler in place). A refused TCP
        connection fails at once, before any process starts."""
        addr = self.address or ""
        hostport = addr.split("://", 1)[-1]
        if addr != "auto" and ":" in hostport:
            host, port = hostport.rsplit(":", 1)
            try:
                socket.create_connection((host.strip("[]"), int(port)),
                                         timeout=self.connect_timeout_s).close()
            except (OSError, ValueError) as e:
                raise ExecutorError(f"cannot reach the Ray cluster at --address {addr!r} "
                                    f"({type(e).__name__}: {e}); {_CONNECT_FIX}") from None
        _probe(addr, self.connect_timeout_s)
        result: dict = {}

        def init() -> None:
            try:
                ray.init(address=addr, **kw)
                result["ok"] = True
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                result["error"] = e

        # off the main thread ray.init warns that it did not set its SIGTERM handler: intended here
        # (the run's own handlers own the signals)
        quiet = _DropMessage("SIGTERM handler is not set")
        ray_log = logging.getLogger("ray._private.worker")
        ray_log.addFilter(quiet)
        t = threading.Thread(target=init, daemon=True, name="ray-connect")
        t.start()
        # the probe just connected: this waits only if the cluster went away in between (then the
        # thread is abandoned, the one case left where the exit can abort; see _probe)
        t.join(self.connect_timeout_s)
        if not t.is_alive():
            ray_log.removeFilter(quiet)
        if t.is_alive():
            raise ExecutorError(f"no Ray cluster answered at --address {addr!r} within "
                                f"{self.connect_timeout_s:.0f} s; {_CONNECT_FIX}")
        if "error" in result:
            e = result["error"]
            raise ExecutorError(f"cannot connect to the Ray cluster at --address {addr!r} "
                                f"({format_error(e)}); {_CONNECT_FIX}") from None

    def _request(self) -> dict:
        """The resources one worker actor asks for (as Ray's scheduler sees them)."""
        req = {"CPU": float(self.cpus_per_worker), "GPU": float(self.gpus_per_worker)}
        return {k: v for k, v in req.items() if v}

    def _scaling(self, now: Optional[float] = None, max_age_s: float = 2.0) -> ScalingView:
        """The autoscaler's state (pipeline.executors.ray_autoscaler), read at most every `max_age_s`.
        Never for a Ray this executor started itself (no autoscaler there)."""
        if self._started_ray:
            return ScalingView()
        now = time.monotonic() if now is None else now
        if now - self._scaling_read_at >= max_age_s:
            self._scaling_view, self._scaling_read_at = read_scaling(), now
        return self._scaling_view

    def _cluster_res(self) -> dict:
        try:
            return {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        except Exception as e:  # noqa: BLE001 - the message is still useful without it
            return {"unknown": format_error(e)}

    def _start_timeout_error(self, view: Optional[ScalingView] = None) -> ExecutorError:
        pending = sum(1 for s in self._slots if s.starting)
        view = view or ScalingView()
        failed = f"; failed launches: {'; '.join(view.failed)}" if view.failed else ""
        want = self._request()
        if view.fits_a_node_up(want):
            # a node that can hold a worker is up, yet none started there: the worker process fails
            # to start on it (runtime environment, authentication mode, a node that cannot import us)
            return ExecutorError(
                f"no Ray worker started within {self.worker_start_timeout_s:.0f} s "
                f"(pipeline.worker_start_timeout_s): {pending} actor(s) requesting {json.dumps(want)} each "
                f"are still pending although a node that can hold one is up (nodes now: {view.nodes_text()}); "
                f"the worker process does not start there: read that node's raylet and worker logs "
                f"(/tmp/ray/session_latest/logs), check the driver and cluster use the same RAY_AUTH_MODE and "
                f"that the node can import sctd3d")
        scaler = "the autoscaler launched nothing for it" if view.autoscaler else "no autoscaler answers"
        return ExecutorError(
            f"no Ray worker started within {self.worker_start_timeout_s:.0f} s "
            f"(pipeline.worker_start_timeout_s) without progress: {pending} actor(s) requesting "
            f"{json.dumps(want)} each are still pending, {scaler}{failed}; the cluster has "
            f"{json.dumps(self._cluster_res())} now. No node can take the request (no GPU node type, quota "
            f"or driver trouble, an autoscaler that cannot launch); fix the cluster (ray status) or lower "
            f"pipeline.gpus_per_worker / cpus_per_worker")

    def _infeasible_error(self, view: ScalingView) -> ExecutorError:
        return ExecutorError(
            f"no node type of the Ray cluster can ever hold a worker: the autoscaler reports the "
            f"request {json.dumps(self._request())} (pipeline.gpus_per_worker / cpus_per_worker) "
            f"infeasible for every node type in its cluster config (nodes now: {view.nodes_text()}); "
            f"add a node type with these resources (ray_cluster.yaml available_node_types) or lower "
            f"the request")

    def _pool_size(self, n_items: int) -> int:
        """Worker actors to request: --num-workers; else one per GPU (CPU) the cluster has now, and
        on a cluster whose autoscaler launches nodes on demand min(items, max_workers) of them (the
        pending actors are the demand that makes it add GPU nodes; each starts as its node comes up)."""
        n = self.num_workers
        if not n:
            res = ray.cluster_resources()
            if self.gpus_per_worker > 0:
                n = int(res.get("GPU", 0) // self.gpus_per_worker)
                what = f"GPUs (need {self.gpus_per_worker} per worker)"
            else:
                n = int(res.get("CPU", 0) // max(self.cpus_per_worker, 1e-9))
                what = f"CPUs (need {self.cpus_per_worker} per worker)"
            view = self._scaling()
            if view.can_launch():
                want = max(n, min(n_items, self.max_workers))
                if want > n:
                    log.info("autoscaling cluster: requesting %d worker(s) of %s (pipeline.max_workers=%d); "
                             "%d can start now, the rest as the autoscaler adds nodes (nodes now: %s)",
                             want, json.dumps(self._request()), self.max_workers, n, view.nodes_text())
                n = want
            elif n < 1:
                res = {k: v for k, v in res.items() if k in ("CPU", "GPU")}
                raise ExecutorError(f"the Ray cluster has no {what}: resources {json.dumps(res)}, and no "
                                    f"autoscaler that launches nodes answers ({view.error or 'none reports'}); "
                                    f"pass --num-workers N to start N workers and let the autoscaler "
                                    f"add nodes for them (pipeline.worker_start_timeout_s bounds the wait)")
        return max(1, min(n, n_items))

    def _new_actor(self) -> _Slot:
        actor = AssetWorker.options(num_gpus=self.gpus_per_worker,
                                    num_cpus=self.cpus_per_worker).remote()
        slot = _Slot(actor=actor)
        slot.ref = actor.ready.remote(self._startup_ref)
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
        self._startup_ref = ray.put(self.startup) if self.startup is not None else None
        self._pending_warned = False
        self._no_worker_since = time.monotonic()
        queue: deque[_Task] = deque(tasks)
        self._slots = [self._new_actor() for _ in range(self._pool_size(len(tasks)))]
        remaining = len(tasks)
        try:
            while remaining:
                if deadline.stop_requested():  # the driver got a signal: dispatch nothing more
                    log.warning("stopping: %s; %d asset(s) not finished (they resume on the re-run)",
                                deadline.stop_requested(), remaining)
                    return
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
                self._check_start_deadline(now)
                for i, slot in enumerate(self._slots):
                    t = slot.task
                    if t is not None and now > t.deadline:
                        log.warning("asset #%d exceeded its %.0f s timeout on %s; killing the worker",
                                    t.index, self.timeout_s, slot.name)
                        self._replace(i)
                        remaining -= 1
                        yield Outcome(item=t.item, ok=False, attempts=t.attempts,
                                      error=f"timeout: exceeded {self.timeout_s:.0f} s per-asset limit "
                                            f"after {now - t.started:.0f} s (pipeline.timeout_s or "
                                            f"timeout_s_per_it; not retried)",
                                      wall_s=now - t.started, worker=slot.name)
        finally:
            self.close()

    def _check_start_deadline(self, now: float) -> None:
        """No actor up yet: stop (ExecutorError) at once when the autoscaler reports the request
        infeasible (no node type can hold it); wait while it launches nodes; stop after
        `worker_start_timeout_s` without a worker and without a launch. Some up, some pending: warn
        once and go on with those that started."""
        if all(s.starting for s in self._slots):  # (also while replacements of dead ones start)
            if self._no_worker_since is None:
                self._no_worker_since = now
            view = self._scaling(now)
            if view.never_fits(self._request()) is not None:
                raise self._infeasible_error(view)
            if view.launching:  # progress: nodes requested or starting for the cluster's demand
                said = view.launching_text()
                if said != self._scaling_said:
                    self._scaling_said = said
                    log.info("waiting for the autoscaler: launching %s (no worker up yet)", said)
                self._no_worker_since = now
            elif now - self._no_worker_since > self.worker_start_timeout_s:
                raise self._start_timeout_error(view)
            return
        self._no_worker_since = None
        late = [s for s in self._slots if s.starting and now - s.since > self.worker_start_timeout_s]
        if late and not self._pending_warned:
            self._pending_warned = True
            log.warning("%d worker actor(s) requesting %s not started after %.0f s; going on with %d",
                        len(late), json.dumps(self._request()), self.worker_start_timeout_s,
                        sum(1 for s in self._slots if not s.starting))

    def _collect(self, i: int, ref: Any, queue: deque) -> Optional[Outcome]:
        slot = self._slots[i]
        task = slot.task
        try:
            value = ray.get(ref)
        except rex.RayTaskError as e:
            # fn raised: the asset's own failure (its worker is fine)
            slot.ref, slot.task = None, None
            cause = e.cause if getattr(e, "cause", None) is not None else e
            if task is None:  # ready() itself raised
                if isinstance(cause, WorkerStartupError):  # its start-up check: every worker would
                    raise ExecutorError(f"a Ray worker failed its start-up check: {cause}") from None
                log.error("worker failed to start: %s", format_error(cause))
                self._replace(i)
                return None
            if self.retry.retries(task.attempts, cause):
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
            if self.retry.retries(task.attempts, died=True):
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
        delay = self.retry.delay(task.attempts)
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
