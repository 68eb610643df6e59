"""Executors: `map(items, fn) -> iterator of Outcome`, in completion order.

Why one small interface: the pipeline wires stages once and runs them in-process (debugging,
tests) or on a Ray cluster without branching. `fn` takes one small, picklable item (a dict of
strings and numbers) and returns a small dict; large data travels as URIs, never through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol


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
    def map(self, items: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]: ...
    def running(self) -> int: ...
    def close(self) -> None: ...


class ExecutorError(RuntimeError):
    """The executor cannot run any item: the cluster is unreachable, no worker can start, or every
    worker fails its start-up check. The message is one line naming what was asked for."""


class WorkerStartupError(RuntimeError):
    """Raised inside a worker whose start-up check (e.g. the prior's CUDA requirement) failed."""


def make_executor(kind: str, **kwargs: Any) -> Executor:
    """`local` or `ray` (kwargs go to the executor's constructor)."""
    if kind == "local":
        from pipeline.executors.local import LocalExecutor

        return LocalExecutor(**{k: v for k, v in kwargs.items()
                                if k in ("max_attempts", "backoff_s", "retry_exceptions", "timeout_s")})
    if kind == "ray":
        from pipeline.executors.ray import RayExecutor

        return RayExecutor(**kwargs)
    raise ValueError(f"executor {kind!r} is not one of ['local', 'ray']")


def format_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[-1] if msg else ''}"[:2000]
