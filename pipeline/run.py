"""One batch run: prompts -> validated requests -> per-asset tasks on an executor -> manifest.

Why the order of writes matters (exactly-once in effect): an asset's artifacts are made durable
first, its manifest record (one atomic part file) last, and only by the driver. So a crash at any
moment leaves either no record (the asset is redone on the re-run; generation resumes from its
last checkpoint) or a complete one (skipped). Execution is at-least-once; records are exactly-once.

This module is the run's orchestration: the lock, run.json, which requests to run
(pipeline.resume), dispatch of `pipeline.asset.AssetTask`s to `pipeline.asset.process_asset` on
an executor, and the commit of each record (pipeline.records). Per run afterwards: FID
(stages.metrics.fid) and the report (stages.report).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from common import deadline, manifest
from pipeline.asset import AssetTask, process_asset
from pipeline.checkpoint_sync import remove_temp_files
from common.config import Config, apply_overrides, config_hash, eval_hash, load_config, to_dict
from pipeline.executors import executor_options as build_executor_options, make_executor
from pipeline.inputs import PromptBatch, asset_generation_hash, read_prompts, request_config
from common.lock import LOST_LOCK, LockHeld, RunLock
from pipeline import records, workers
from pipeline.records import committed, failed_record, now, rejected_record
from pipeline.resume import REDO_CHOICES, commit_rejects, input_key, select_todo
from common.storage import Storage, StorageError, asset_dir, open_storage, set_storage_options
from pipeline.validate import check_names
from stages.metrics.fid import run_fid
from stages.priors.registry import token_limit
from stages import faults
from stages.provenance import code_version  # one home: meta.json and run.json say the same
from stages.report import build_report

log = logging.getLogger(__name__)

__all__ = ["REDO_CHOICES", "RunSummary", "input_key", "run_batch", "select_todo"]


# ----------------------------------------------------------------------------------------------
# One run (the driver)
# ----------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    out: str
    total: int            # valid, deduplicated requests
    skipped: int          # already committed before this run
    done: int             # committed `done` in this run
    failed: int
    rejected: int
    duplicates: int
    wall_s: float
    report_exit_code: Optional[int] = None
    interrupted: str = ""   # the signal that stopped the run ('' = it ran to the end)

    def exit_code(self) -> int:
        """0 all done, 1 some failed/rejected or the report saw a regression, 128+N when signal N
        stopped the run (130 SIGINT, 143 SIGTERM). Usage/config/storage errors (2) are raised."""
        if self.interrupted:
            return 128 + int(getattr(signal, self.interrupted, signal.SIGINT))
        if self.failed or self.rejected or self.report_exit_code:
            return 1
        return 0

    def where(self) -> str:
        """What a user should open after a run (paths under the output root)."""
        root = self.out.rstrip("/")
        return "\n".join([
            f"assets:   {root}/assets/<id[:2]>/<id>/ (asset.ply, meta.json, frames/, turntable.mp4)",
            f"manifest: {root}/manifest/manifest.parquet  (sctd3d manifest show {root})",
            f"report:   {root}/report/report.html",
            f"run info: {root}/run.json"])

    def line(self) -> str:
        return (f"{self.out}: {self.done} done, {self.failed} failed, {self.rejected} rejected, "
                f"{self.skipped} already done, {self.duplicates} duplicate rows collapsed "
                f"({self.wall_s:.1f} s)")


class _Progress:
    """One run-level bar (done / failed / running / ETA) on stderr; per-asset lines via logging."""

    def __init__(self, total: int, enabled: bool, running: Callable[[], int]):
        self.done = self.failed = 0
        self.running = running
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="asset", dynamic_ncols=True, desc="assets")
            self.bar.set_postfix_str(self._postfix())

    def _postfix(self) -> str:
        return f"done={self.done} failed={self.failed} running={self.running()}"

    def update(self, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self._postfix())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_run_json(st: Storage, data: dict) -> None:
    try:
        st.write_text("run.json", json.dumps(data, indent=2, default=str))
    except OSError as e:
        raise StorageError(f"cannot write {st.uri('run.json')}: {e.strerror or e}; free space or fix "
                           f"permissions, then re-run the same command (committed assets are kept)"
                           ) from e


def run_batch(prompts_uri: str, cfg: Config | str, out: str, executor: Optional[str] = None,
              address: Optional[str] = None, num_workers: Optional[int] = None, *,
              progress: bool = True, executor_options: Optional[dict] = None,
              storage_options: Optional[dict] = None, redo: str = "failed") -> RunSummary:
    """Run (or resume) a batch. Re-running the same command skips committed assets.

    executor: a name in pipeline.executors.EXECUTORS (None: `pipeline.executor`); address,
    num_workers, executor_options: overrides of the options it builds from the config.
    storage_options: fsspec options of the output store (e.g. endpoint_url), for every process.
    redo: which committed assets run again (REDO_CHOICES); a `done` asset whose files are gone is
    always redone.
    SIGINT/SIGTERM (main thread only): no new asset starts, the running one stops at its next
    iteration (local) or is left to resume from its checkpoint (Ray), run.json says `interrupted`.
    """
    t_run = time.perf_counter()
    if isinstance(cfg, (str, os.PathLike)):
        cfg = load_config(cfg)
    from common.plugins import load_plugins, plugin_specs

    load_plugins()                      # $SCTD3D_PLUGINS and entry points, then the config's
    load_plugins(cfg.pipeline.plugins, source="pipeline.plugins")
    if plugin_specs() != list(cfg.pipeline.plugins):  # workers import every plugin the driver did
        cfg = apply_overrides(cfg, {"pipeline.plugins": plugin_specs()}, "plugins")
    if executor is not None and executor != cfg.pipeline.executor:
        cfg = apply_overrides(cfg, {"pipeline.executor": executor}, "--executor")
    check_names(cfg)
    executor = cfg.pipeline.executor
    if redo not in REDO_CHOICES:
        raise ValueError(f"--redo {redo!r} is not one of {list(REDO_CHOICES)}")
    from stages.init import check_requirements

    check_requirements(cfg.init)  # e.g. Point-E missing: one line before the lock, run.json or the prior
    from pipeline.preflight import check_cache_dir, check_prompts_file

    if storage_options:  # before anything opens the store (prompts may live there too)
        set_storage_options(out, storage_options)
    check_prompts_file(prompts_uri)  # missing, a directory or a non-Parquet .parquet: before the lock
    check_cache_dir(cfg)  # an unwritable $SCTD3D_CACHE would fail only after generation
    faults.active()  # a benchmark's fault names (stages.faults: read once), a typo one line here
    from pipeline.preflight import check_store

    try:
        st = open_storage(out)
        check_store(st)  # object stores: endpoint reachable, credentials accepted (one line if not)
        lock = RunLock(st, stale_after_s=cfg.pipeline.lock_stale_s).acquire()
    except OSError as e:  # read-only mount, permissions, full disk: say so before any work
        raise StorageError(f"cannot write to the output root {out!r}: {e.strerror or e} "
                           f"({getattr(e, 'filename', None) or out}); choose a writable --out, fix "
                           f"its permissions or free space") from e
    try:
        with _StopOnSignals() as signals:
            return _run_locked(prompts_uri, cfg, st, executor, address, num_workers,
                               progress, executor_options or {}, t_run, signals,
                               storage_options or {}, redo)
    finally:
        lock.release()


class _StopOnSignals:
    """SIGINT/SIGTERM -> a stop request (common.deadline) instead of dying mid-write.

    Why: a run killed by the default handlers leaves run.json `running`, the lock behind and (for
    SIGINT) a long traceback. The first signal stops dispatching; the running asset stops at its next
    iteration, keeping its checkpoints; a second signal raises KeyboardInterrupt (stop now: the
    lock is still released and run.json still written). Only the main thread can own handlers;
    elsewhere this does nothing. `reinstall()` after ray.init, which sets its own SIGTERM handler."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = ""
        self._prev: dict = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received:
            raise KeyboardInterrupt(name)
        self.received = name
        deadline.request_stop(name)
        log.warning("%s received: stopping; no new asset starts, a running one stops at its next "
                    "iteration (local) or with its worker (Ray) and resumes from its checkpoint on the "
                    "re-run (send %s again to stop at once)", name, name)

    def reinstall(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                prev = signal.signal(s, self._handle)
                self._prev.setdefault(s, prev)

    def __enter__(self) -> "_StopOnSignals":
        deadline.clear_stop()
        self.reinstall()
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, prev in self._prev.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)
        self._prev.clear()
        deadline.clear_stop()


def _run_locked(prompts_uri: str, cfg: Config, st: Storage, executor: str, address: Optional[str],
                num_workers: Optional[int], progress: bool, executor_options: dict, t_run: float,
                signals: "_StopOnSignals", storage_options: dict, redo: str = "failed"
                ) -> RunSummary:
    count_tokens, max_tokens = token_limit(cfg.prior)
    import pyarrow as pa

    try:
        batch: PromptBatch = read_prompts(prompts_uri, cfg, count_tokens=count_tokens,
                                          max_tokens=max_tokens)
    except pa.ArrowException as e:  # a damaged Parquet prompt file: one line, not a traceback
        from pipeline.inputs import InputError

        raise InputError(f"cannot read the prompt file {prompts_uri!r} as Parquet: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not batch.requests and not batch.rejected and not batch.duplicates:
        from pipeline.inputs import InputError

        raise InputError(f"no prompts in {prompts_uri}; give a file with one prompt per line "
                         f"(.txt), JSONL rows or a Parquet 'prompt' column")
    # everything that can refuse this run is read before run.json is touched (a refused re-run
    # must leave a `finished` run.json as it was)
    existing = {r["asset_id"]: r for r in manifest.read_compacting(st).to_pylist()}  # parts read once
    version = code_version()
    prev = _read_run_json(st)
    run_info = {
        "status": "running",
        "started_at": prev.get("started_at") or now().isoformat(),
        "resumed_at": (prev.get("resumed_at") or []) + ([now().isoformat()] if prev else []),
        "prompts": prompts_uri, "out": st.root, "executor": executor,
        "config_hash": config_hash(cfg), "config_source": cfg.source, "config": to_dict(cfg),
        "generation_hash": asset_generation_hash(cfg), "eval_hash": eval_hash(cfg),
        "code_version": version, "host": socket.gethostname(),
        "counts": {"requests": len(batch.requests), "rejected": len(batch.rejected),
                   "duplicates": batch.duplicates},
    }
    if prev.get("status") in ("failed", "interrupted"):  # say what stopped the last run
        run_info["previous_stop"] = {k: prev.get(k) for k in ("status", "error", "finished_at")}
        log.warning("the previous run on %s stopped (%s: %s); resuming", st.root, prev.get("status"),
                    prev.get("error") or prev.get("interrupted_by") or "no reason recorded")
    _write_run_json(st, run_info)
    if st.local:  # leftovers of a killed driver (we hold the lock: nothing else writes these)
        remove_temp_files(st.root, recursive=False)
        remove_temp_files(st.path(manifest.PARTS_DIR), recursive=False)

    # rejected rows: one part for this input's rejects (ids are hashes of the raw rows)
    at, key, chash = now(), input_key(prompts_uri), config_hash(cfg)
    rej_records = [rejected_record(r, cfg, chash, key, version, at) for r in batch.rejected]
    commit_rejects(st, prompts_uri, rej_records, existing)
    for r in batch.rejected:
        log.warning("rejected input line %d: %s (%s)", r.line, r.reason, r.prompt[:80])

    todo = select_todo(st, batch.requests, existing, redo)
    skipped = len(batch.requests) - len(todo)
    if skipped:
        log.info("%d of %d assets already committed; %d to do", skipped, len(batch.requests), len(todo))
    prior_attempts = {r.asset_id: int((existing.get(r.asset_id) or {}).get("attempts") or 0)
                      for r in todo}
    by_id = {r.asset_id: r for r in todo}

    # the prior's device check runs where the workers are as each starts (this process for `local`;
    # never on a cluster's driver: its head node has no GPU by design)
    given = {"address": address, "num_workers": num_workers, "startup": _worker_start(cfg),
             "timeout_s": asset_timeout_s(cfg), **executor_options}
    opts = build_executor_options(executor, cfg.pipeline, **given)
    run_info["asset_timeout_s"] = opts.get("timeout_s")
    ex = make_executor(executor, **opts)
    items = [AssetTask(request=r, cfg=cfg, out=st.root, storage_options=storage_options)
             for r in todo]
    bar = _Progress(0, False, ex.running)  # the real bar starts once the run can start
    n_done = n_failed = 0
    try:
        if todo and not deadline.stop_requested():
            ex.start()           # connect / check before the first asset: ray.init replaces the
            signals.reinstall()  # SIGTERM handler, so ours goes back on top
        bar = _Progress(len(todo), progress, ex.running)
        for o in ex.map(items, process_asset):
            req = by_id[o.item.asset_id]
            attempts = prior_attempts[req.asset_id] + o.attempts
            if not o.ok and deadline.stop_requested():
                # stopped by the signal, not by its own fault: no record, so the re-run resumes it
                log.warning("interrupted %s %-40.40s (resumes from its last checkpoint on the re-run)",
                            req.asset_id, req.prompt)
                break
            if not o.ok and _store_full(o.error):
                # every later asset would fail the same way (a failure storm): stop the run
                raise StorageError(f"asset {req.asset_id} failed writing its files: "
                                   f"{_store_full(o.error)}; the run stopped (no later asset could be "
                                   f"written either); free space or fix the output/cache folder, then "
                                   f"re-run the same command (committed assets are kept)")
            if o.ok:
                rec = committed(o.value, req, attempts, version)
                records.commit(st, rec)
                n_done += 1
                log.info("done   %s %-40.40s %6.1f s attempts=%d %s", req.asset_id, req.prompt,
                         rec.get("wall_s") or o.wall_s, attempts, o.worker)
            else:
                records.commit(st, failed_record(req, request_config(cfg, req), o.error or "unknown error",
                                                 attempts, o.wall_s, o.worker, version))
                n_failed += 1
                log.error("failed %s %-40.40s attempts=%d: %s", req.asset_id, req.prompt, attempts,
                          o.error)
            bar.update(o.ok)
            if deadline.stop_requested():
                break
    except BaseException as e:  # a second signal, a full disk, a bug: run.json must not say running
        kind = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        run_info.update(status=kind, finished_at=now().isoformat(),
                        error=f"{type(e).__name__}: {e}"[:2000],
                        this_run={"done": n_done, "failed": n_failed, "skipped": skipped})
        try:
            _write_run_json(st, run_info)
        except StorageError as e2:  # e.g. the disk is full: the original error matters more
            log.error("%s", e2)
        raise
    finally:
        bar.close()
        ex.close()

    stopped_by = deadline.stop_requested()
    if stopped_by.startswith(LOST_LOCK):  # another run owns the root now: write nothing more
        raise LockHeld(f"{stopped_by}; this run stopped without compacting or writing run.json "
                       f"(its committed assets are kept); re-run the same command once the other "
                       f"run has finished")
    interrupted = bool(stopped_by)
    # merge this run's parts (we hold the lock): FID, the report and every later reader read one file
    manifest.compact_locked(st)
    report_code = None
    if not interrupted:
        try:
            report_code = _run_level(cfg, st, ex, run_info)
        except BaseException as e:  # FID or the report failed: run.json must not say running
            run_info.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                            finished_at=now().isoformat(),
                            error=f"{type(e).__name__}: {e}"[:2000],
                            this_run={"done": n_done, "failed": n_failed, "skipped": skipped})
            try:
                _write_run_json(st, run_info)
            except StorageError as e2:
                log.error("%s", e2)
            raise
    summary = RunSummary(out=st.root, total=len(batch.requests), skipped=skipped, done=n_done,
                         failed=n_failed, rejected=len(batch.rejected), duplicates=batch.duplicates,
                         wall_s=time.perf_counter() - t_run, report_exit_code=report_code,
                         interrupted=stopped_by)
    c = manifest.counts(manifest.read(st))
    run_info.update(status="interrupted" if interrupted else "finished",
                    finished_at=now().isoformat(), manifest_counts=c,
                    this_run={"done": n_done, "failed": n_failed, "skipped": skipped})
    if stopped_by:
        run_info["interrupted_by"] = stopped_by
    _write_run_json(st, run_info)
    log.info("run %s", summary.line())
    if stopped_by:
        log.warning("stopped by %s: %d asset(s) committed in this run; re-run the same command to "
                    "resume the rest", stopped_by, n_done + n_failed)
    return summary


_FULL_STORE = ("No space left on device", "Read-only file system", "Disk quota exceeded")


def asset_timeout_s(cfg: Config) -> float:
    """The per-asset timeout (0 = none): pipeline.timeout_s, or, when pipeline.timeout_s_per_it > 0
    (the cluster GPU's seconds per iteration), timeout_margin x generate.iterations x timeout_s_per_it
    + timeout_overhead_s. An asset past it fails with `timeout: exceeded N s per-asset limit ...` in the manifest
    (error, wall_s) and is not retried."""
    p = cfg.pipeline
    if p.timeout_s_per_it > 0:
        return p.timeout_margin * cfg.generate.iterations * p.timeout_s_per_it + p.timeout_overhead_s
    return p.timeout_s


def _store_full(error: Optional[str]) -> str:
    """The storage condition (ENOSPC, EROFS, EDQUOT) an asset's failure reason names, or ''."""
    return next((m for m in _FULL_STORE if m in (error or "")), "")


def _read_run_json(st: Storage) -> dict:
    """The previous run.json, or {} when there is none or it cannot be parsed (it is rewritten)."""
    if not st.exists("run.json"):
        return {}
    try:
        prev = json.loads(st.read_text("run.json"))
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("ignoring an unreadable %s (%s); it is rewritten", st.uri("run.json"), e)
        return {}
    return prev if isinstance(prev, dict) else {}


def _worker_start(cfg: Config) -> Callable[[], Any]:
    """A worker's start-up (pipeline.workers.start_worker: the prior's device requirement, the
    driver's generation seam) as a picklable no-argument call."""
    return functools.partial(workers.start_worker, cfg.prior, workers.GENERATOR)


def _on_worker(ex: Any, fn: Callable[[Any], Any], item: Any) -> Any:
    """Run one run-level task through the run's executor (where the GPUs are); raise on failure."""
    outs = list(ex.map([item], fn))
    if not outs or not outs[0].ok:
        raise RuntimeError(f"run-level task failed on {outs[0].worker if outs else 'no worker'}: "
                           f"{outs[0].error if outs else 'not run (stopped)'}")
    return outs[0].value


def _run_level(cfg: Config, st: Storage, ex: Any = None, run_info: Optional[dict] = None
               ) -> Optional[int]:
    """FID and the report, when enabled.

    FID's reference images, when sampled from the prior, are made by a worker of `ex` (the head
    node of a cluster has no GPU); a skipped FID says why in metrics/fid.json and run.json."""
    rec: Optional[dict] = None
    if cfg.metrics.fid:
        done = [r for r in manifest.read(st).to_pylist() if r["status"] == "done"]
        dirs = [asset_dir(st.root, r["asset_id"]) for r in done]
        if not cfg.pipeline.render:
            log.info("run-level FID skipped: pipeline.render is off (FID needs evaluation frames)")
            rec = {"fid": None, "reason": "pipeline.render is off (FID needs evaluation frames)"}
        else:
            runner = functools.partial(_on_worker, ex) if ex is not None else None
            rec = run_fid(cfg, dirs, [r["prompt"] for r in done], st.root, run_on_worker=runner)
    if run_info is not None and rec is not None:
        run_info["fid"] = {k: rec.get(k) for k in ("fid", "reason", "reference", "n_generated",
                                                   "n_reference") if k in rec}
    if not cfg.pipeline.report:
        return None
    return int(build_report(st.root, st.uri("report", "report.html"), cfg=cfg))

