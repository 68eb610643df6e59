"""Test doubles for generation, entering through the run's own seams.

A fake generator replaces `pipeline.asset.generate` (the module attribute every worker calls):
`use_generate` patches it in this process (the local executor) and returns the executor options
that install it in each Ray worker as it starts (Ray workers are other processes). Fakes return a
real `stages.generate.GenerateResult` (`result`). `stop_after_commits` stands in for a Ctrl-C
after N records (the run's real stop request).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pipeline.asset
from common import deadline, manifest
from stages.generate import GenerateResult


def result(asset_dir: str | Path, num_gaussians: int = 1, resumed_from: int = 0,
           device: str = "cpu", wall_s: float = 0.0, **meta: Any) -> GenerateResult:
    """The GenerateResult of a finished asset in `asset_dir` (asset.ply, meta.json)."""
    d = Path(asset_dir)
    return GenerateResult(ok=True, asset_dir=str(d), asset_ply=str(d / "asset.ply"),
                          meta_path=str(d / "meta.json"), iterations=0, wall_s=wall_s,
                          unet_calls=0, num_gaussians=num_gaussians, resumed_from=resumed_from,
                          meta={"device": device, **meta})


def install_generate(fake: Callable[..., GenerateResult]) -> None:
    """Runs in a worker process as it starts (the Ray executor's `startup`)."""
    pipeline.asset.generate = fake


def use_generate(monkeypatch: Any, fake: Callable[..., GenerateResult]) -> dict:
    """Make `fake` the run's generator; returns executor_options for a Ray run."""
    monkeypatch.setattr(pipeline.asset, "generate", fake)
    try:
        import ray

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    except ImportError:  # no Ray: local runs only
        pass
    return {"startup": functools.partial(install_generate, fake)}


def stop_after_commits(monkeypatch: Any, n: int) -> None:
    """After the n-th committed record, the run gets a stop request, as from a first Ctrl-C."""
    real, count = manifest.commit, [0]

    def commit(storage: Any, record: dict) -> str:
        out = real(storage, record)
        count[0] += 1
        if count[0] >= n:
            deadline.request_stop("SIGINT")
        return out
    monkeypatch.setattr(manifest, "commit", commit)


@contextlib.contextmanager
def generating(fake: Callable[..., GenerateResult]) -> Iterator[dict]:
    """`use_generate` for a block (no monkeypatch fixture needed); yields the Ray options."""
    old = pipeline.asset.generate
    mp = _Patch()
    try:
        yield use_generate(mp, fake)
    finally:
        pipeline.asset.generate = old


class _Patch:
    """The one monkeypatch method `use_generate` needs, for `generating`."""

    @staticmethod
    def setattr(obj: Any, name: str, value: Any) -> None:
        setattr(obj, name, value)


def run_batch(fake: Callable[..., GenerateResult], *args: Any, **kwargs: Any) -> Any:
    """pipeline.run.run_batch with `fake` as the generator, here and in each Ray worker."""
    import pipeline.run

    with generating(fake) as on_workers:
        if kwargs.get("executor", args[3] if len(args) > 3 else "local") == "ray":
            kwargs["executor_options"] = {**on_workers, **(kwargs.get("executor_options") or {})}
        return pipeline.run.run_batch(*args, **kwargs)
