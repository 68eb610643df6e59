"""Manifest records from typed stage results: the one place a record is assembled.

Why one function: the columns an asset's record fills (and where each value comes from) were
spread over the worker and the driver; here each column of `common.manifest.SCHEMA` that a run
writes has exactly one source.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from common.config import Config
from pipeline.inputs import AssetRequest, RejectedRow
from common.manifest import METRIC_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    from stages.generate import GenerateResult
    from stages.metrics import MetricScores
    from stages.render import RenderResult
    from common.storage import Storage

UriOf = Callable[[Optional[str]], Optional[str]]


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Timing:
    """When and where one attempt at an asset ran."""

    started_at: dt.datetime
    finished_at: dt.datetime
    wall_s: float
    worker: str           # host:pid
    device: str           # e.g. cuda:NVIDIA H200 or cpu, when generation does not say


def _identity(req: AssetRequest, cfg: Config) -> dict[str, Any]:
    return {"asset_id": req.asset_id, "prompt": req.prompt, "seed": req.seed,
            "method": cfg.generate.method, "prior": cfg.prior.name,
            "config_hash": req.config_hash, "generation_hash": req.generation_hash}


def record_from(req: AssetRequest, cfg: Config, gen: "GenerateResult",
                render: "Optional[RenderResult]", scores: "Optional[MetricScores]",
                timing: Timing, uri_of: UriOf, eval_hash: Optional[str]) -> dict[str, Any]:
    """The (not yet committed) record of one generated asset; `uri_of` maps a path inside the
    asset's working folder to its final URI; `eval_hash` is None when a stage was off (evaluate
    fills it). The driver adds status, attempts and provenance (`committed`)."""
    device = str(gen.meta.get("device") or timing.device)
    uris = render.uris() if render is not None else {}
    return {
        **_identity(req, cfg),
        "eval_hash": eval_hash,
        "started_at": timing.started_at, "finished_at": timing.finished_at, "wall_s": timing.wall_s,
        "gpu_s": gen.wall_s if device.startswith("cuda") else None,
        "device": device,
        "num_gaussians": gen.num_gaussians,
        "resumed_from_iter": gen.resumed_from,
        "asset_uri": uri_of(gen.asset_ply or "asset.ply"),
        "frames_uri": uri_of(uris.get("frames_uri")),
        "video_uri": uri_of(uris.get("video_uri")),
        "sheet_uri": uri_of(uris.get("sheet_uri")),
        **{k: (scores.get(k) if scores is not None else None) for k in METRIC_COLUMNS},
        "worker": timing.worker,
        "renderer": gen.meta.get("renderer"),
    }


def committed(rec: dict[str, Any], req: AssetRequest, attempts: int,
              code_version: str) -> dict[str, Any]:
    """A worker's record as the driver commits it: done, with attempts and provenance."""
    return {**rec, "status": "done", "attempts": attempts, "code_version": code_version,
            "tags": req.tags, "slug": req.slug, "input_line": req.line, "error": None}


def failed_record(req: AssetRequest, cfg: Config, error: str, attempts: int, wall_s: float,
                  worker: str, code_version: str) -> dict[str, Any]:
    """The record of an asset whose every attempt failed (`error`: the executor's reason)."""
    return {**_identity(req, cfg), "status": "failed", "error": error, "attempts": attempts,
            "finished_at": now(), "wall_s": wall_s, "worker": worker,
            "code_version": code_version, "tags": req.tags, "slug": req.slug,
            "input_line": req.line}


def rejected_record(row: RejectedRow, cfg: Config, config_hash: str, input_uri: str,
                    code_version: str, at: dt.datetime) -> dict[str, Any]:
    """The record of an input row that failed validation (its id is re-keyed by input file)."""
    return {"asset_id": row.asset_id, "prompt": row.prompt, "seed": row.seed, "status": "rejected",
            "error": row.reason, "attempts": 0, "finished_at": at, "tags": row.tags,
            "input_line": row.line, "code_version": code_version, "method": cfg.generate.method,
            "prior": cfg.prior.name, "config_hash": config_hash, "input_uri": input_uri}


def rescored_record(old: dict[str, Any], values: dict[str, Any], uris: dict[str, Optional[str]],
                    eval_hash: str, config_hash: str, at: Optional[dt.datetime] = None
                    ) -> dict[str, Any]:
    """A `done` record re-scored by `sctd3d evaluate`: the same asset (identity, timing, attempts
    kept) with the new per-asset metric columns (kept, recomputed or None), frame/video/sheet URIs,
    `eval_hash`, `config_hash` and `evaluated_at`."""
    rec = dict(old)
    rec.update({k: _finite(values.get(k)) for k in METRIC_COLUMNS})
    rec.update({k: uris.get(k) for k in ("frames_uri", "video_uri", "sheet_uri")})
    rec.update(eval_hash=eval_hash, config_hash=config_hash, evaluated_at=at or now())
    return rec


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and x != x else x  # NaN -> null


def commit(st: "Storage", rec: dict[str, Any]) -> None:
    """Commit one record (one atomic part file, written after the asset's files), with one clear
    line when the store refuses the write (full disk, read-only): no later record could be written
    either, so the caller stops; records committed before are kept. The one writer of asset
    records: `run` (done and failed assets) and `evaluate` (re-scored ones) commit through here."""
    from common import manifest

    try:
        manifest.commit(st, rec)
    except OSError as e:
        raise _refused(st, f"the manifest record of asset {rec['asset_id']}", e,
                       "this asset is redone") from e


def commit_many(st: "Storage", recs: list[dict[str, Any]], name: str) -> None:
    """Commit several records as one atomic part `name` (a run's rejected input rows), with the
    same one-line error as `commit` when the store refuses the write."""
    from common import manifest

    try:
        manifest.commit_many(st, recs, name)
    except OSError as e:
        raise _refused(st, f"{len(recs)} manifest record(s) ({name})", e, "these are rewritten") from e


def _refused(st: "Storage", what: str, e: OSError, redo: str) -> Exception:
    from common.storage import StorageError

    return StorageError(f"cannot commit {what} under {st.root}: {e.strerror or e}; free space or "
                        f"fix permissions, then re-run the same command (committed records are "
                        f"kept, {redo})")
