"""Test doubles for generation, entering through the run's own seams.

A fake generator enters through the generation seam, `pipeline.workers.GENERATOR` (docs/
INTERFACES.md): `use_generate` sets it in this process; a run hands the driver's value to every
worker as it starts (`pipeline.workers.start_worker`, the executors' start-up), so the same fake
runs in-process and in Ray workers (other processes) with no executor option. Fakes return a real
`stages.generate.GenerateResult` (`result`). `stop_after_commits` stands in for a Ctrl-C after N
records (the run's real stop request).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pipeline.workers
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


def use_generate(monkeypatch: Any, fake: Callable[..., GenerateResult]) -> None:
    """Make `fake` the run's generator (here and, through the run's worker start-up, on Ray)."""
    monkeypatch.setattr(pipeline.workers, "GENERATOR", fake)
    try:
        import ray

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # fakes' helpers travel
    except ImportError:  # no Ray: local runs only
        pass


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
def generating(fake: Callable[..., GenerateResult]) -> Iterator[None]:
    """`use_generate` for a block (no monkeypatch fixture needed)."""
    old = pipeline.workers.GENERATOR
    try:
        yield use_generate(_Patch(), fake)
    finally:
        pipeline.workers.GENERATOR = old


class _Patch:
    """The one monkeypatch method `use_generate` needs, for `generating`."""

    @staticmethod
    def setattr(obj: Any, name: str, value: Any) -> None:
        setattr(obj, name, value)


def run_batch(fake: Callable[..., GenerateResult], *args: Any, **kwargs: Any) -> Any:
    """pipeline.run.run_batch with `fake` as the generator, here and in each Ray worker."""
    import pipeline.run

    with generating(fake):
        return pipeline.run.run_batch(*args, **kwargs)
