"""One asset, in a worker: the typed task the executor ships, and every per-asset stage.

Why typed: the unit of work between the driver and the stages is an `AssetTask` in and typed
results out (`stages.generate.GenerateResult`, `stages.render.RenderResult`,
`stages.metrics.MetricScores`); `pipeline.records.record_from` turns them into the manifest record.
The generation entry is `pipeline.workers.generate` (the worker's cached-prior generate; a test
or benchmark generator enters through the seam `pipeline.workers.GENERATOR`, installed in every
worker by the run's start-up).

Per asset: init + generate, then the evaluation render and per-asset metrics when
`pipeline.render` / `pipeline.score` are on. On object stores an asset is produced in a local
staging folder seeded from what is already at its URI (so checkpoints survive preemption) and
uploaded before its record is committed (by the driver).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.checkpoint_sync import CheckpointSync, remove_temp_files
from common.config import Config, eval_hash
from pipeline.inputs import AssetRequest, request_config
from pipeline.records import Timing, now, record_from
from common.storage import asset_relpath, is_temp_name, open_storage, set_storage_options
from pipeline.workers import generate
from stages.generate import GenerateResult
from stages.metrics import MetricScores, score_asset
from stages.render import RenderResult, render_asset

log = logging.getLogger(__name__)

__all__ = ["AssetTask", "StageResults", "process_asset"]


@dataclass(frozen=True)
class AssetTask:
    """What the executor ships to a worker for one asset (picklable)."""

    request: AssetRequest
    cfg: Config                 # the run's config; the row's overrides are applied in the worker
    out: str                    # the run's output root URI
    storage_options: dict = field(default_factory=dict)  # fsspec options, for another process

    @property
    def asset_id(self) -> str:
        return self.request.asset_id


@dataclass(frozen=True)
class StageResults:
    generate: GenerateResult
    render: Optional[RenderResult] = None
    scores: Optional[MetricScores] = None


def device_name() -> str:
    import torch  # a hard dependency: no fallback needed

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def run_stages(cfg: Config, req: AssetRequest, adir: str) -> StageResults:
    """generate, then render and score when enabled; raises when generation reports failure."""
    from stages.generation_id import driver_hash

    with driver_hash(req.generation_hash):  # the driver's hash (the id's), never one of this worker's
        gen = generate(cfg, req.prompt, req.seed, adir, progress=False)
    if not isinstance(gen, GenerateResult):
        raise TypeError(f"generate returned {type(gen).__name__}, not a GenerateResult")
    if not gen.ok:  # the stage reports a failed asset (e.g. NaN guard gave up)
        raise RuntimeError(f"generation failed: {gen.error or 'no reason given'}")
    render = render_asset(cfg, adir, req.prompt) if cfg.pipeline.render else None
    scores = score_asset(cfg, adir, req.prompt) if cfg.pipeline.score else None
    if cfg.pipeline.mesh and gen.asset_ply:  # before the record: the folder is complete when it is
        from stages.export.run_mesh import write_asset_mesh

        orbit = {"elevation_deg": cfg.render.elevation_deg, "radius": cfg.render.radius,
                 "fovy": cfg.render.fovy}
        write_asset_mesh(adir, gen.asset_ply, req.asset_id, req.prompt, cfg.pipeline.mesh,
                         cfg.pipeline.mesh_options, orbit)
    return StageResults(gen, render, scores)


def uri_mapper(adir: str, to_uri: Callable[[str], str]) -> Callable[[Optional[str]], Optional[str]]:
    """Map a stage's output path (absolute inside `adir`, or relative to it) to its final URI."""
    def uri_of(p: Optional[str]) -> Optional[str]:
        if p is None:
            return None
        p = str(p)
        if "://" in p:
            return p
        sub = os.path.relpath(p, adir) if os.path.isabs(p) else p
        if sub.startswith(".."):
            raise RuntimeError(f"stage output {p!r} lies outside the asset folder {adir!r}")
        return to_uri(sub)
    return uri_of


def process_asset(task: AssetTask) -> dict[str, Any]:
    """Run every per-asset stage for one task; return its (uncommitted) manifest record.

    Raises on failure (the executor records the reason)."""
    from common.plugins import load_plugins

    load_plugins(task.cfg.pipeline.plugins)  # a worker is its own process: the driver's plugins (run_batch)
    req = task.request
    cfg: Config = request_config(task.cfg, req)
    if task.storage_options:  # a Ray worker is another process: apply the driver's options
        set_storage_options(task.out, task.storage_options)
    st = open_storage(task.out)
    rel = asset_relpath(req.asset_id)

    started = now()
    t0 = time.perf_counter()
    if st.local:
        local_dir = st.path(rel)
        os.makedirs(local_dir, exist_ok=True)
        remove_temp_files(local_dir)  # left by a killed earlier attempt; only we write here now
        res = run_stages(cfg, req, local_dir)
        uri_of = uri_mapper(local_dir, lambda sub: os.path.join(local_dir, sub))
    else:
        with tempfile.TemporaryDirectory(prefix="sctd3d-asset-") as tmp:
            n = st.get_dir(rel, tmp)
            if n:
                log.info("asset %s: staged %d existing file(s) from %s", req.asset_id, n, st.uri(rel))
            syncer = CheckpointSync(st, tmp, rel, cfg.pipeline.checkpoint_sync_s)
            try:
                res = run_stages(cfg, req, tmp)
            finally:
                syncer.stop()
                syncer.sync()  # also on failure: the next attempt resumes from here
            for f in Path(tmp).rglob("*"):
                if f.is_file() and not is_temp_name(f.name):
                    st.put_file(str(f), f"{rel}/{f.relative_to(tmp).as_posix()}")
        uri_of = uri_mapper(tmp, lambda sub: st.uri(rel, sub))
    timing = Timing(started_at=started, finished_at=now(), wall_s=time.perf_counter() - t0,
                    worker=f"{socket.gethostname()}:{os.getpid()}", device=device_name())
    # the settings its scores were made with; none when a stage was off (evaluate fills it)
    scored = cfg.pipeline.render and cfg.pipeline.score
    return record_from(req, cfg, res.generate, res.render, res.scores, timing, uri_of,
                       eval_hash(cfg) if scored else None)
