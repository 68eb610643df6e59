"""One batch run: prompts -> validated requests -> per-asset stages on an executor -> manifest.

Why the order of writes matters (exactly-once in effect): an asset's artifacts are made durable
first, its manifest record (one atomic part file) last, and only by the driver. So a crash at any
moment leaves either no record (the asset is redone on the re-run; generation resumes from its
last checkpoint) or a complete one (skipped). Execution is at-least-once; records are exactly-once.

Per asset (in a worker): init + generate (stages.generate.generate), then the evaluation render
(stages.render.render_asset) and per-asset metrics (stages.metrics.score_asset) when those stages
are installed and enabled. Per run: FID (stages.metrics.fid) and the report (stages.report).
On object stores an asset is produced in a local staging folder seeded from what is already at
its URI (so checkpoints survive preemption) and uploaded before its record is committed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline import deadline, manifest
from pipeline.config import Config, config_hash, eval_hash, load_config, to_dict
from pipeline.executors import make_executor
from pipeline.inputs import (AssetRequest, PromptBatch, asset_generation_hash, read_prompts,
                             request_config)
from pipeline.lock import RunLock
from pipeline.storage import (Storage, StorageError, asset_dir, open_storage, safe_relpath,
                              set_storage_options)
from pipeline.validate import check_names
from stages.provenance import code_version  # one home: meta.json and run.json say the same

log = logging.getLogger(__name__)

GenerateFn = Callable[..., Any]   # generate(cfg, prompt, seed, asset_dir, progress=False) -> result


# ----------------------------------------------------------------------------------------------
# Capabilities: which optional stages exist in this installation
# ----------------------------------------------------------------------------------------------
def _stage(module: str, attr: str) -> Optional[Callable]:
    """`module.attr` if the module is installed; an installed module that fails to import is an
    error (a broken stage must not be silently skipped)."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return None
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except ModuleNotFoundError:
        return None
    fn = getattr(importlib.import_module(module), attr, None)
    return fn if callable(fn) else None


def capabilities() -> dict[str, bool]:
    """Which stages this installation has (reported in run.json and by `demo`)."""
    return {"generate": _stage("stages.generate", "generate") is not None,
            "render": _stage("stages.render", "render_asset") is not None,
            "metrics": _stage("stages.metrics", "score_asset") is not None,
            "fid": _stage("stages.metrics.fid", "run_fid") is not None,
            "report": _stage("stages.report", "build_report") is not None}


def token_limit(cfg: Config) -> tuple[Optional[Callable[[str], int]], Optional[int]]:
    """The prior's prompt-token counter and limit, from its tokenizer alone (no model load).

    Stable Diffusion priors (and the toy SD, which uses the same CLIP tokenizer format) have a
    `tokenizer/` folder; toy_exact has no tokenizer. When the tokenizer cannot be read here (e.g. a
    hub id not cached on the driver), prompts are still checked against the character cap and the
    prior's own truncation warning applies; the reason is logged."""
    if cfg.prior.name not in ("stable_diffusion", "toy_sd"):
        return None, None
    sd = _stage("stages.priors.stable_diffusion", "toy_sd_model")
    if sd is None:
        log.warning("token-limit check skipped: stages.priors.stable_diffusion is not installed")
        return None, None
    from stages.priors import stable_diffusion as sdmod

    model = sdmod.toy_sd_model(cfg.prior.model) if cfg.prior.name == "toy_sd" else cfg.prior.model
    local = Path(model).expanduser()
    if local.is_file():
        log.warning("token-limit check skipped: prior.model %s is a single file", model)
        return None, None
    if cfg.prior.name == "toy_sd" and not local.is_dir():
        log.warning("token-limit check skipped: the toy SD directory %s does not exist", model)
        return None, None
    if local.is_dir() and not (local / "tokenizer").is_dir():
        log.warning("token-limit check skipped: %s has no tokenizer/ folder", model)
        return None, None
    from transformers import CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained(str(local) if local.is_dir() else model,
                                            subfolder="tokenizer",
                                            revision=None if local.is_dir() else (cfg.prior.revision or None),
                                            local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as e:
        log.warning("token-limit check skipped: cannot read the tokenizer of %s (%s)", model,
                    (str(e).splitlines()[0] if str(e) else type(e).__name__)[:120])
        return None, None
    return (lambda p: len(tok(p, truncation=False).input_ids)), int(tok.model_max_length)


# ----------------------------------------------------------------------------------------------
# One asset (runs in a worker)
# ----------------------------------------------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _result_fields(res: Any) -> dict:
    if res is None:
        return {}
    if dataclasses.is_dataclass(res):
        return dataclasses.asdict(res)
    if isinstance(res, dict):
        return dict(res)
    return {k: getattr(res, k) for k in dir(res) if not k.startswith("_")}


def _device_name() -> str:
    import torch  # a hard dependency: no fallback needed

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


_PRIORS: dict[str, Any] = {}   # per worker process: a loaded prior is reused across assets


def _real_generate(cfg: Config, prompt: str, seed: int, asset_dir: str, progress: bool = False):
    """stages.generate.generate with the prior loaded once per worker process (actors stay warm)."""
    gen = _stage("stages.generate", "generate")
    if gen is None:
        raise RuntimeError("stages.generate is not installed; cannot generate assets")
    load_prior = _stage("stages.priors.registry", "load_prior")
    key = json.dumps([dataclasses.asdict(cfg.prior), dataclasses.asdict(cfg.toy)], sort_keys=True)
    if load_prior is not None and key not in _PRIORS:
        _PRIORS.clear()
        _PRIORS[key] = load_prior(cfg.prior, cfg.prior.device, toy=cfg.toy)
    return gen(cfg, prompt, seed, asset_dir, progress=progress, prior=_PRIORS.get(key))


class _CheckpointSync:
    """Object-store outputs: upload an asset's committed checkpoints while it runs, so a preempted
    worker's successor resumes from them. Only files renamed into place are uploaded (never *.tmp),
    tensors before their JSON commit marker."""

    def __init__(self, st: Storage, local_dir: str, rel: str, every_s: float):
        self.st, self.local_dir, self.rel, self.every_s = st, Path(local_dir), rel, every_s
        self.sent: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ckpt-sync")
        if every_s > 0:
            self._thread.start()

    def sync(self) -> int:
        ck = self.local_dir / "checkpoints"
        if not ck.is_dir():
            return 0
        files = sorted((f for f in ck.iterdir() if f.is_file() and not _is_temp(f.name)),
                       key=lambda f: (f.suffix == ".json", f.name))
        n = 0
        for f in files:
            mtime = f.stat().st_mtime
            if self.sent.get(f.name) == mtime:
                continue
            self.st.put_file(str(f), f"{self.rel}/checkpoints/{f.name}")
            self.sent[f.name] = mtime
            n += 1
        return n

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sync()
            except (OSError, FileNotFoundError) as e:  # a checkpoint rotated away mid-upload
                log.warning("checkpoint sync of %s: %s", self.rel, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


def _is_temp(name: str) -> bool:
    from pipeline.storage import is_temp_name

    return is_temp_name(name)


def remove_temp_files(folder: str, recursive: bool = True) -> int:
    """Delete in-progress-write leftovers ('.tmp-*', '*.tmp') of a killed process under `folder`.

    Why: a SIGKILL between a temp write and its rename leaves the temp file behind. Readers never
    see it (temp names are hidden), but it must not accumulate. Only call this where no other
    process can be writing: an asset's folder at the start of its attempt (one attempt per asset
    at a time), or the run's own folders while holding the run lock."""
    base = Path(folder)
    if not base.is_dir():
        return 0
    n = 0
    for f in (base.rglob("*") if recursive else base.iterdir()):
        if f.is_file() and _is_temp(f.name):
            f.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("removed %d stale temp file(s) under %s", n, folder)
    return n


def process_asset(task: dict, generate_fn: Optional[GenerateFn] = None) -> dict:
    """Run every per-asset stage for one request; return its (uncommitted) manifest fields.

    `task`: {"request": AssetRequest as dict, "cfg": Config, "out": output URI}. Raises on failure
    (the executor records the reason)."""
    req = AssetRequest(**task["request"])
    cfg: Config = request_config(task["cfg"], req)
    if task.get("storage_options"):  # a Ray worker is another process: apply the driver's options
        set_storage_options(task["out"], task["storage_options"])
    st = open_storage(task["out"])
    rel = safe_relpath("assets", req.asset_id[:2], req.asset_id)
    gen = generate_fn or _real_generate
    render = _stage("stages.render", "render_asset") if cfg.pipeline.render else None
    score = _stage("stages.metrics", "score_asset") if cfg.pipeline.score else None

    started = _now()
    t0 = time.perf_counter()
    if st.local:
        local_dir = st.path(rel)
        os.makedirs(local_dir, exist_ok=True)
        remove_temp_files(local_dir)  # left by a killed earlier attempt; only we write here now
        fields = _run_stages(cfg, req, local_dir, gen, render, score)
        uri_of = _uri_mapper(local_dir, lambda sub: os.path.join(local_dir, sub))
    else:
        with tempfile.TemporaryDirectory(prefix="sctd3d-asset-") as tmp:
            n = st.get_dir(rel, tmp)
            if n:
                log.info("asset %s: staged %d existing file(s) from %s", req.asset_id, n, st.uri(rel))
            syncer = _CheckpointSync(st, tmp, rel, cfg.pipeline.checkpoint_sync_s)
            try:
                fields = _run_stages(cfg, req, tmp, gen, render, score)
            finally:
                syncer.stop()
                syncer.sync()  # also on failure: the next attempt resumes from here
            for f in Path(tmp).rglob("*"):
                if f.is_file() and not _is_temp(f.name):
                    st.put_file(str(f), f"{rel}/{f.relative_to(tmp).as_posix()}")
        uri_of = _uri_mapper(tmp, lambda sub: st.uri(rel, sub))
    wall = time.perf_counter() - t0
    g = fields["generate"]
    r = fields.get("render") or {}
    m = fields.get("metrics") or {}
    meta = g.get("meta") or {}
    device = g.get("device") or meta.get("device") or _device_name()
    gen_wall = g.get("wall_s")
    return {
        "asset_id": req.asset_id,
        "prompt": req.prompt,
        "seed": req.seed,
        "method": cfg.generate.method,
        "prior": cfg.prior.name,
        "config_hash": req.config_hash,
        "generation_hash": req.generation_hash,
        # the settings its scores were made with; none when a stage was off (evaluate fills it)
        "eval_hash": eval_hash(cfg) if render is not None and score is not None else None,
        "started_at": started,
        "finished_at": _now(),
        "wall_s": wall,
        "gpu_s": g.get("gpu_s") if "gpu_s" in g else (gen_wall if str(device).startswith("cuda")
                                                       else None),
        "device": str(device),
        "num_gaussians": g.get("num_gaussians"),
        "resumed_from_iter": g.get("resumed_from_iter", g.get("resumed_from")),
        "asset_uri": uri_of(g.get("asset_ply") or "asset.ply"),
        "frames_uri": uri_of(r.get("frames_uri")),
        "video_uri": uri_of(r.get("video_uri")),
        "sheet_uri": uri_of(r.get("sheet_uri")),
        **{k: m.get(k) for k in ("clip_l", "image_reward", "toy_psnr", "toy_rprec")},
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "renderer": g.get("renderer") or meta.get("renderer"),
    }


def _uri_mapper(adir: str, to_uri: Callable[[str], str]) -> Callable[[Optional[str]], Optional[str]]:
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


def _run_stages(cfg: Config, req: AssetRequest, adir: str, gen: GenerateFn,
                render: Optional[Callable], score: Optional[Callable]) -> dict:
    res = _result_fields(gen(cfg, req.prompt, req.seed, adir, progress=False))
    if res.get("ok") is False:  # the stage reports a failed asset (e.g. NaN guard gave up)
        raise RuntimeError(f"generation failed: {res.get('error') or 'no reason given'}")
    fields: dict = {"generate": res}
    if render is not None:
        fields["render"] = render(cfg, adir, req.prompt) or {}
    if score is not None:
        fields["metrics"] = score(cfg, adir, req.prompt) or {}
    return fields


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


def _failed_record(req: AssetRequest, cfg: Config, error: str, attempts: int, wall: float,
                   worker: str) -> dict:
    return {"asset_id": req.asset_id, "prompt": req.prompt, "seed": req.seed,
            "method": cfg.generate.method, "prior": cfg.prior.name, "config_hash": req.config_hash,
            "generation_hash": req.generation_hash,
            "status": "failed", "error": error, "attempts": attempts, "finished_at": _now(),
            "wall_s": wall, "worker": worker}


def _commit(st: Storage, rec: dict) -> None:
    """manifest.commit with a clear error when the store refuses the write (full disk, read-only):
    the run stops (no later record could be written either); committed records are kept."""
    try:
        manifest.commit(st, rec)
    except OSError as e:
        raise StorageError(f"cannot commit the manifest record of asset {rec['asset_id']} under "
                           f"{st.root}: {e.strerror or e}; free space or fix permissions, then re-run "
                           f"the same command (committed assets are kept, this one is redone)") from e


def _write_run_json(st: Storage, data: dict) -> None:
    try:
        st.write_text("run.json", json.dumps(data, indent=2, default=str))
    except OSError as e:
        raise StorageError(f"cannot write {st.uri('run.json')}: {e.strerror or e}; free space or fix "
                           f"permissions, then re-run the same command (committed assets are kept)"
                           ) from e


def run_batch(prompts_uri: str, cfg: Config | str, out: str, executor: str = "local",
              address: Optional[str] = None, num_workers: Optional[int] = None, *,
              generate_fn: Optional[GenerateFn] = None, progress: bool = True,
              stop_after: Optional[int] = None, executor_options: Optional[dict] = None,
              storage_options: Optional[dict] = None, redo: str = "failed") -> RunSummary:
    """Run (or resume) a batch. Re-running the same command skips committed assets.

    generate_fn: replaces stages.generate.generate (tests, benchmarks). stop_after: stop
    scheduling after this many commits (simulates an interrupted run; the rest resume later).
    storage_options: fsspec options of the output store (e.g. endpoint_url), for every process.
    redo: which committed assets run again (REDO_CHOICES); a `done` asset whose files are gone is
    always redone.
    SIGINT/SIGTERM (main thread only): no new asset starts, the running one stops at its next
    iteration (local) or is left to resume from its checkpoint (Ray), run.json says `interrupted`.
    """
    t_run = time.perf_counter()
    if isinstance(cfg, (str, os.PathLike)):
        cfg = load_config(cfg)
    check_names(cfg)
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor {executor!r} is not one of ['local', 'ray']")
    if redo not in REDO_CHOICES:
        raise ValueError(f"--redo {redo!r} is not one of {list(REDO_CHOICES)}")
    from stages.init import check_requirements

    check_requirements(cfg.init)  # e.g. Point-E missing: one line before the lock, run.json or the prior
    from pipeline.preflight import check_cache_dir, check_prompts_file

    if storage_options:  # before anything opens the store (prompts may live there too)
        set_storage_options(out, storage_options)
    check_prompts_file(prompts_uri)  # missing, a directory or a non-Parquet .parquet: before the lock
    check_cache_dir(cfg)  # an unwritable $SCTD3D_CACHE would fail only after generation
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
            return _run_locked(prompts_uri, cfg, st, executor, address, num_workers, generate_fn,
                               progress, stop_after, executor_options or {}, t_run, signals,
                               storage_options or {}, redo)
    finally:
        lock.release()


class _StopOnSignals:
    """SIGINT/SIGTERM -> a stop request (pipeline.deadline) instead of dying mid-write.

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
                num_workers: Optional[int], generate_fn: Optional[GenerateFn], progress: bool,
                stop_after: Optional[int], executor_options: dict, t_run: float,
                signals: "_StopOnSignals", storage_options: dict, redo: str = "failed"
                ) -> RunSummary:
    count_tokens, max_tokens = token_limit(cfg)
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
    caps = capabilities()
    prev = _read_run_json(st)
    run_info = {
        "status": "running",
        "started_at": prev.get("started_at") or _now().isoformat(),
        "resumed_at": (prev.get("resumed_at") or []) + ([_now().isoformat()] if prev else []),
        "prompts": prompts_uri, "out": st.root, "executor": executor,
        "config_hash": config_hash(cfg), "config_source": cfg.source, "config": to_dict(cfg),
        "generation_hash": asset_generation_hash(cfg), "eval_hash": eval_hash(cfg),
        "code_version": version, "host": socket.gethostname(), "capabilities": caps,
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
    now = _now()
    rej_records = [{"asset_id": r.asset_id, "prompt": r.prompt, "seed": r.seed, "status": "rejected",
                    "error": r.reason, "attempts": 0, "finished_at": now, "tags": r.tags,
                    "input_line": r.line, "code_version": version, "method": cfg.generate.method,
                    "prior": cfg.prior.name, "config_hash": config_hash(cfg),
                    "input_uri": input_key(prompts_uri)}
                   for r in batch.rejected]
    _commit_rejects(st, prompts_uri, rej_records, existing)
    for r in batch.rejected:
        log.warning("rejected input line %d: %s (%s)", r.line, r.reason, r.prompt[:80])

    todo = select_todo(st, batch.requests, existing, redo)
    skipped = len(batch.requests) - len(todo)
    if skipped:
        log.info("%d of %d assets already committed; %d to do", skipped, len(batch.requests), len(todo))
    prior_attempts = {r.asset_id: int((existing.get(r.asset_id) or {}).get("attempts") or 0)
                      for r in todo}
    by_id = {r.asset_id: r for r in todo}

    p = cfg.pipeline
    if executor == "ray":
        opts = dict(address=address, num_workers=num_workers or p.num_workers or None,
                    gpus_per_worker=p.gpus_per_worker, cpus_per_worker=p.cpus_per_worker,
                    max_attempts=p.max_attempts, backoff_s=p.backoff_s, timeout_s=p.timeout_s,
                    worker_start_timeout_s=p.worker_start_timeout_s,
                    connect_timeout_s=p.connect_timeout_s,
                    # the prior's device check runs in each worker as it starts, never here (a
                    # cluster's head node has no GPU by design)
                    startup=_device_check(cfg) if generate_fn is None else None)
    else:
        opts = dict(max_attempts=p.max_attempts, backoff_s=p.backoff_s, timeout_s=p.timeout_s)
    opts.update(executor_options)
    ex = make_executor(executor, **opts)
    fn = functools.partial(process_asset, generate_fn=generate_fn)
    items = [{"request": dataclasses.asdict(r), "cfg": cfg, "out": st.root,
              **({"storage_options": storage_options} if storage_options else {})} for r in todo]
    bar = _Progress(0, False, ex.running)  # the real bar starts once the run can start
    n_done = n_failed = 0
    interrupted = False
    try:
        if todo and executor == "local" and generate_fn is None:
            check = _device_check(cfg)
            if check is not None:
                check()  # the local worker is this process: fail before the first asset
        if todo and hasattr(ex, "_ensure_ray") and not deadline.stop_requested():
            ex._ensure_ray()     # connect first: ray.init replaces the SIGTERM handler ...
            signals.reinstall()  # ... so ours goes back on top
        bar = _Progress(len(todo), progress, ex.running)
        for o in ex.map(items, fn):
            req = by_id[o.item["request"]["asset_id"]]
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
                rec = dict(o.value)
                rec.update(status="done", attempts=attempts, code_version=version, tags=req.tags,
                           slug=req.slug, input_line=req.line, error=None)
                _commit(st, rec)
                n_done += 1
                log.info("done   %s %-40.40s %6.1f s attempts=%d %s", req.asset_id, req.prompt,
                         rec.get("wall_s") or o.wall_s, attempts, o.worker)
            else:
                rec = _failed_record(req, request_config(cfg, req), o.error or "unknown error",
                                     attempts, o.wall_s, o.worker)
                rec.update(code_version=version, tags=req.tags, slug=req.slug, input_line=req.line)
                _commit(st, rec)
                n_failed += 1
                log.error("failed %s %-40.40s attempts=%d: %s", req.asset_id, req.prompt, attempts,
                          o.error)
            bar.update(o.ok)
            if stop_after is not None and n_done + n_failed >= stop_after:
                interrupted = True
                log.warning("stopping after %d commits (stop_after)", stop_after)
                break
            if deadline.stop_requested():
                break
    except BaseException as e:  # a second signal, a full disk, a bug: run.json must not say running
        kind = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        run_info.update(status=kind, finished_at=_now().isoformat(),
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
    interrupted = interrupted or bool(stopped_by)
    # merge this run's parts (we hold the lock): FID, the report and every later reader read one file
    manifest.compact_locked(st)
    report_code = None
    if not interrupted:
        try:
            report_code = _run_level(cfg, st, ex, run_info)
        except BaseException as e:  # FID or the report failed: run.json must not say running
            run_info.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                            finished_at=_now().isoformat(),
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
                    finished_at=_now().isoformat(), manifest_counts=c,
                    this_run={"done": n_done, "failed": n_failed, "skipped": skipped})
    if stopped_by:
        run_info["interrupted_by"] = stopped_by
    _write_run_json(st, run_info)
    log.info("run %s", summary.line())
    if stopped_by:
        log.warning("stopped by %s: %d asset(s) committed in this run; re-run the same command to "
                    "resume the rest", stopped_by, n_done + n_failed)
    return summary


REDO_CHOICES = ("failed", "missing", "all")


def select_todo(st: Storage, requests: list[AssetRequest], existing: dict[str, dict],
                redo: str = "failed") -> list[AssetRequest]:
    """The requests to run: `failed` (default) = no record, a failed record, or a `done` record
    whose files are gone; `missing` = the same without retrying failed ones; `all` = every request.

    Why verify: a `done` record whose asset.ply was deleted used to be skipped as done forever. The
    check is one existence test per recorded file of a done asset (threaded on object stores)."""
    if redo == "all":
        return list(requests)
    done = [r for r in requests if (existing.get(r.asset_id) or {}).get("status") == "done"]
    gone = {r.asset_id for r, ok in zip(done, _files_present(st, [existing[r.asset_id] for r in done]))
            if not ok}
    for aid in sorted(gone):
        log.warning("asset %s is recorded done but its files are gone (%s); redoing it", aid,
                    existing[aid].get("asset_uri"))
    keep_failed = redo == "missing"
    todo = []
    for r in requests:
        status = (existing.get(r.asset_id) or {}).get("status")
        if status == "done" and r.asset_id not in gone:
            continue
        if status == "failed" and keep_failed:
            continue
        todo.append(r)
    return todo


def _files_present(st: Storage, records: list[dict]) -> list[bool]:
    """Per done record: do its recorded files (asset, video, sheet) still exist?"""
    import fsspec

    prefix = st.root.rstrip("/") + "/"

    def exists(uri: str) -> bool:
        if uri.startswith(prefix):
            return st.exists(uri[len(prefix):])
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.exists(path)

    def present(rec: dict) -> bool:
        return all(exists(u) for u in (rec.get("asset_uri"), rec.get("video_uri"), rec.get("sheet_uri"))
                   if isinstance(u, str) and u)
    if st.local or len(records) < 8:
        return [present(r) for r in records]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(present, records))


def input_key(prompts_uri: str) -> str:
    """The prompt file's identity in the manifest's `input_uri` (local paths made absolute)."""
    from pipeline.storage import is_local

    if is_local(prompts_uri):
        return os.path.abspath(os.path.expanduser(prompts_uri.split("://", 1)[-1]))
    return prompts_uri


def _commit_rejects(st: Storage, prompts_uri: str, records: list[dict],
                    existing: dict[str, dict]) -> None:
    """One rejected part per prompt file, replaced by each run: a row fixed in the input no longer
    shows as rejected. Rejects of this input that the compacted manifest still holds are dropped
    by a compaction (we hold the run lock); rejects of other inputs are kept."""
    import hashlib

    key = input_key(prompts_uri)
    name = "rejected-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    for r in records:  # the same bad row in two prompt files: two records, one per file
        r["asset_id"] = "r" + hashlib.sha256(f"{key}\0{r['asset_id']}".encode()).hexdigest()[:19]
    if records:
        manifest.commit_many(st, records, name)
    else:
        st.rm(f"{manifest.PARTS_DIR}/{name}.parquet")
    current = {r["asset_id"] for r in records}
    stale = {aid for aid, r in existing.items() if r.get("status") == "rejected"
             and r.get("input_uri") == key and aid not in current}
    if stale:
        log.info("%d rejected record(s) of %s superseded by the fixed input", len(stale), key)
        if st.exists(manifest.COMPACTED):
            manifest.compact_locked(st, drop_ids=stale)
        for aid in stale:
            existing.pop(aid, None)


_FULL_STORE = ("No space left on device", "Read-only file system", "Disk quota exceeded")


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


def _device_check(cfg: Config) -> Optional[Callable[[], Any]]:
    """The prior's device requirement (stages.priors.device) as a picklable no-argument call."""
    require = _stage("stages.priors.device", "require_device")
    return functools.partial(require, cfg.prior) if require is not None else None


def _on_worker(ex: Any, fn: Callable[[Any], Any], item: Any) -> Any:
    """Run one run-level task through the run's executor (where the GPUs are); raise on failure."""
    outs = list(ex.map([item], fn))
    if not outs or not outs[0].ok:
        raise RuntimeError(f"run-level task failed on {outs[0].worker if outs else 'no worker'}: "
                           f"{outs[0].error if outs else 'not run (stopped)'}")
    return outs[0].value


def _run_level(cfg: Config, st: Storage, ex: Any = None, run_info: Optional[dict] = None
               ) -> Optional[int]:
    """FID and the report, when those stages exist and are enabled.

    FID's reference images, when sampled from the prior, are made by a worker of `ex` (the head
    node of a cluster has no GPU); a skipped FID says why in metrics/fid.json and run.json."""
    fid = _stage("stages.metrics.fid", "run_fid") if cfg.metrics.fid else None
    rec: Optional[dict] = None
    if fid is not None:
        done = [r for r in manifest.read(st).to_pylist() if r["status"] == "done"]
        dirs = [asset_dir(st.root, r["asset_id"]) for r in done]
        if not cfg.pipeline.render:
            log.info("run-level FID skipped: pipeline.render is off (FID needs evaluation frames)")
            rec = {"fid": None, "reason": "pipeline.render is off (FID needs evaluation frames)"}
        else:
            runner = functools.partial(_on_worker, ex) if ex is not None else None
            rec = fid(cfg, dirs, [r["prompt"] for r in done], st.root, run_on_worker=runner)
    elif cfg.metrics.fid:
        log.info("run-level FID skipped: stages.metrics.fid.run_fid is not installed")
        rec = {"fid": None, "reason": "stages.metrics.fid.run_fid is not installed"}
    if run_info is not None and rec is not None:
        run_info["fid"] = {k: rec.get(k) for k in ("fid", "reason", "reference", "n_generated",
                                                   "n_reference") if k in rec}
    build = _stage("stages.report", "build_report") if cfg.pipeline.report else None
    if build is None:
        return None
    return int(build(st.root, st.uri("report", "report.html"), cfg=cfg))


# ----------------------------------------------------------------------------------------------
# The embedded demo
# ----------------------------------------------------------------------------------------------
DEMO_CONFIG = "demo.yaml"


def demo(out: str = "runs/demo", num_workers: Optional[int] = None, n_prompts: int = 4,
         progress: bool = True) -> RunSummary:
    """Toy-world prompts through the Ray executor on local CPUs (no GPU, no downloads).

    Re-running resumes (committed assets are skipped). `summary.where()` says what to look at."""
    from pipeline.config import resolve_config_path
    from stages.toyworld.catalogue import list_objects

    if n_prompts < 1:
        raise ValueError(f"n_prompts={n_prompts}: must be >= 1")
    cfg = load_config(resolve_config_path(DEMO_CONFIG))
    workers = num_workers or cfg.pipeline.num_workers or 2
    prompts = [o.prompt for o in list_objects()][:n_prompts]
    st = open_storage(out)
    st.write_text("prompts.txt", "\n".join(prompts) + "\n")
    return run_batch(st.uri("prompts.txt"), cfg, out, executor="ray", num_workers=workers,
                     progress=progress,
                     executor_options={"num_cpus": max(workers, 1), "backoff_s": cfg.pipeline.backoff_s})
