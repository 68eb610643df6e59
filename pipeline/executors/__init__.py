"""Executors: `map(items, fn) -> iterator of Outcome`, in completion order, and the registry of them.

Why one small interface: the pipeline wires stages once and runs them in-process (debugging,
tests) or on a Ray cluster without branching. `fn` takes one small, picklable item (a dict of
strings and numbers) and returns a small dict; large data travels as URIs, never through here.

Why a registry: `pipeline.executor` (and `--executor`) names an entry of `EXECUTORS`; the entry
builds its constructor's options from the config (`options_from(pipeline_cfg)`), so `run`,
`export` and `evaluate` never know which executor they drive. A new executor is one module that
calls `register_executor(ExecutorSpec(...))` (a plugin module: common/plugins.py; `EXECUTORS` is a
`common.plugins.Registry`, the one registry implementation).
Every executor is started with `start()` (connect to a cluster, run the `startup` check where its
workers are) before `map`, and retries by one `RetryPolicy`.
"""

from __future__ import annotations

from common.errors import UserError
from common.plugins import Registry
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from common.config import PipelineConfig


@dataclass
class Outcome:
    item: Any                 # the item as given
    ok: bool
    value: Any = None         # fn's return value when ok
    error: Optional[str] = None   # final failure reason when not ok
    attempts: int = 1
    wall_s: float = 0.0       # of the last attempt
    worker: str = ""


class Executor(Protocol):
    def start(self) -> None: ...
    def map(self, items: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]: ...
    def running(self) -> int: ...
    def close(self) -> None: ...


class ExecutorError(UserError, RuntimeError):
    """The executor cannot run any item: the cluster is unreachable, no worker can start, or every
    worker fails its start-up check. The message is one line naming what was asked for."""


class WorkerStartupError(RuntimeError):
    """Raised inside a worker whose start-up check (e.g. the prior's CUDA requirement) failed."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is tried again, and after how long (every executor uses this one).

    A dead worker (preemption, OOM kill) is retried up to `max_attempts`; an exception raised by
    `fn` only with `retry_exceptions` (it is usually deterministic: a bad prompt, a NaN the guard
    gave up on); a timeout or a stop of the run never (it would burn GPU hours on the same asset)."""

    max_attempts: int = 1
    backoff_s: float = 0.0
    retry_exceptions: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts!r}: must be >= 1")
        if self.backoff_s < 0:
            raise ValueError(f"backoff_s={self.backoff_s!r}: must be >= 0")

    def retries(self, attempts: int, error: Optional[BaseException] = None, *, died: bool = False) -> bool:
        """Whether an item whose attempt number `attempts` (1-based) just failed runs again."""
        from common import deadline

        if attempts >= self.max_attempts:
            return False
        if died:
            return True
        if isinstance(error, (deadline.AssetTimeout, deadline.RunInterrupted)):
            return False
        return self.retry_exceptions

    def delay(self, attempts: int) -> float:
        """Seconds to wait before the attempt after attempt number `attempts` (exponential)."""
        return self.backoff_s * 2 ** (attempts - 1)


@dataclass(frozen=True)
class ExecutorSpec:
    """A registered executor: its name, its class (imported when used) and its options."""

    name: str
    load: Callable[[], Callable[..., Executor]]            # -> the executor class / factory
    options_from: Callable[["PipelineConfig"], dict]       # the constructor's options from the config
    doc: str = ""


EXECUTORS: Registry[ExecutorSpec] = Registry(
    "executor", "--executor", unknown=lambda kind, names: f"executor {kind!r} is not one of {sorted(names)}")


def register_executor(spec: ExecutorSpec, *, replace: bool = False) -> ExecutorSpec:
    """Add `spec` under `spec.name` (a name another module registered: one-line PluginError)."""
    return EXECUTORS.register(spec, replace=replace)


def executor_names() -> list[str]:
    return sorted(EXECUTORS.names())


def _spec(kind: str) -> ExecutorSpec:
    """UnknownComponent (a ValueError, one line naming the choices) for an unregistered `kind`."""
    return EXECUTORS.get(kind)


def executor_options(kind: str, pipeline_cfg: "PipelineConfig", **given: Any) -> dict:
    """The options executor `kind` is built with: from the config, then `given` (None = keep the
    config's). A given option the executor does not take (`address` for `local`) is left out."""
    spec = _spec(kind)
    opts = dict(spec.options_from(pipeline_cfg))
    params = inspect.signature(spec.load()).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    opts.update({k: v for k, v in given.items() if v is not None and (takes_any or k in params)})
    return opts


def make_executor(kind: str, **kwargs: Any) -> Executor:
    """Executor `kind` built with `kwargs` (see `executor_options`); not started yet."""
    return _spec(kind).load()(**kwargs)


def format_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[-1] if msg else ''}"[:2000]


# ------------------------------------------------------------------------------------------------
# the shipped executors
# ------------------------------------------------------------------------------------------------
def _local() -> Callable[..., Executor]:
    from pipeline.executors.local import LocalExecutor

    return LocalExecutor


def _ray() -> Callable[..., Executor]:
    from pipeline.executors.ray import RayExecutor

    return RayExecutor


def _retry_options(p: "PipelineConfig") -> dict:
    return dict(max_attempts=p.max_attempts, backoff_s=p.backoff_s, timeout_s=p.timeout_s)


def _ray_options(p: "PipelineConfig") -> dict:
    return dict(_retry_options(p), num_workers=p.num_workers or None, gpus_per_worker=p.gpus_per_worker,
                cpus_per_worker=p.cpus_per_worker, worker_start_timeout_s=p.worker_start_timeout_s,
                connect_timeout_s=p.connect_timeout_s, max_workers=p.max_workers)


def _local_options(p: "PipelineConfig") -> dict:
    return _retry_options(p)


register_executor(ExecutorSpec("local", _local, _local_options,
                               "in-process, one item at a time (debugging, tests, a single GPU)"))
register_executor(ExecutorSpec("ray", _ray, _ray_options,
                               "a pool of Ray actors on a local or remote cluster (one GPU each)"))
