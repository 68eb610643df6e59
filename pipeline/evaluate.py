"""`sctd3d evaluate RUN`: re-score a finished run under new evaluation settings, never regenerating.

Why this shape (the run's own): per-asset work goes through an executor (`--executor local|ray`:
on Ray each asset is re-rendered and re-scored by a worker, where the GPUs are), the driver alone
commits records (pipeline.records: one part file per asset, after its files are swapped in), and
the run-level results are written last: metrics/evaluate.json, then run.json (FID, an `evaluate`
entry), so a run.json that names this evaluation means it finished.

What is re-scored: every `done` asset whose recorded `eval_hash` differs from the config's (a
config that would generate other assets is refused: stages.evaluate.check_same_generation).
Metrics not in `metrics.metrics` are kept when the settings they read did not change since they
were scored (stages.metrics.settings), and marked stale (null in the manifest, the old value and
the changed keys in the asset's metrics.json and in metrics/evaluate.json) when they did. The
settings each eval_hash stands for are kept in `metrics/eval_settings/<eval_hash>.json` (run.json's
config for the run's own).

Failures do not stop it: an asset that cannot be re-scored (asset.ply gone, a metric that cannot
load, a link out of the run) keeps its old record and files and is listed with its reason; the
exit code is 1. SIGINT/SIGTERM: no new asset starts, the running one stops between steps and stays
as it was, the lock is released, and the command says how to finish (re-run it; exit 130/143).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from common import deadline, manifest
from common.config import Config, config_hash, eval_hash, evaluation_settings
from common.lock import RunLock
from common.storage import Storage, StorageError, asset_dir, open_storage
from pipeline import records
from pipeline.executors import executor_names, executor_options, make_executor
from stages.evaluate import (EvaluateError, RescoreTask, check_same_generation, evaluate_asset,
                             link_out_of_root, rescore_asset, run_config, run_root)
from stages.metrics import PER_ASSET
from stages.metrics.settings import changed

log = logging.getLogger(__name__)

SETTINGS_DIR = "metrics/eval_settings"
SUMMARY_FILE = "metrics/evaluate.json"

__all__ = ["EvaluateError", "EvaluateSummary", "evaluate", "evaluate_run"]


@dataclass
class EvaluateSummary:
    out: str
    assets: int                 # done assets in the run
    rescored: int
    unchanged: int              # already scored with these settings
    failed: dict = field(default_factory=dict)     # asset_id -> reason (old record kept)
    stale: dict = field(default_factory=dict)      # metric -> assets where it is stale
    kept: dict = field(default_factory=dict)       # metric -> assets where it was kept
    eval_hash: str = ""
    fid: Optional[float] = None
    means: dict = field(default_factory=dict)
    interrupted: str = ""       # the signal that stopped it ('' = it ran to the end)
    left: int = 0               # assets not reached because of the stop
    wall_s: float = 0.0

    def exit_code(self) -> int:
        if self.interrupted:
            return 128 + int(getattr(signal, self.interrupted, signal.SIGINT))
        return 1 if self.failed else 0

    def as_dict(self) -> dict:
        d = {"assets": self.assets, "rescored": self.rescored, "unchanged": self.unchanged,
             "failed": len(self.failed), "eval_hash": self.eval_hash}
        d.update({f"mean_{k}": v for k, v in self.means.items()})
        d.update({f"stale_{k}": v for k, v in self.stale.items()})
        d.update({f"kept_{k}": v for k, v in self.kept.items()})
        if self.fid is not None:
            d["fid"] = self.fid
        return d

    def lines(self) -> list[str]:
        """What the command prints (stdout), then the hints (stderr) in `hints`."""
        return [f"{k}: {v}" for k, v in self.as_dict().items()]

    def hints(self) -> list[str]:
        out = []
        for aid, why in sorted(self.failed.items())[:10]:
            out.append(f"sctd3d evaluate: asset {aid} not re-scored (kept as it was): {why}")
        if len(self.failed) > 10:
            out.append(f"sctd3d evaluate: ... {len(self.failed) - 10} more in {self.out}/{SUMMARY_FILE}")
        for m, n in sorted(self.stale.items()):
            out.append(f"sctd3d evaluate: {m} is stale on {n} asset(s) (scored with other settings, "
                       f"not recomputed); add it to metrics.metrics to re-score it")
        if self.interrupted:
            out.append(f"sctd3d evaluate: stopped by {self.interrupted}: {self.rescored} asset(s) "
                       f"re-scored, {self.left} left; re-run the same command to finish (re-scored "
                       f"assets are kept)")
        return out


def resolve_target(target: str) -> tuple[str, str]:
    """("asset", dir) for an asset directory (with asset.ply), ("run", root) for a run (its output
    root, manifest/ or a manifest .parquet); FileNotFoundError (one line) otherwise."""
    import os

    if "://" not in target and not os.path.exists(target):
        raise FileNotFoundError(f"evaluate: {target!r} does not exist; give an asset directory or a run "
                                f"(output root, manifest/ or a manifest .parquet)")
    st = open_storage(target) if not target.endswith(".parquet") else None
    if st is not None and st.exists("asset.ply"):
        return "asset", target
    root = run_root(target)
    if root is None:
        raise FileNotFoundError(f"evaluate: {target!r} is neither an asset directory (with asset.ply) nor a "
                                f"run (output root, manifest/ or a manifest .parquet)")
    return "run", root


def evaluate(target: str, cfg: Config, executor: str = "local", address: Optional[str] = None,
             num_workers: Optional[int] = None, executor_options: Optional[dict] = None) -> dict:
    """Re-score an asset directory in place (stages.evaluate.evaluate_asset) or a run
    (`evaluate_run`); returns the summary as a dict."""
    kind, where = resolve_target(target)
    if kind == "asset":
        scores = evaluate_asset(cfg, where)
        scores.pop("_render", None)
        return {"assets": 1, **scores}
    return evaluate_run(where, cfg, executor, address, num_workers, executor_options).as_dict()


# ----------------------------------------------------------------------------------------------
# Which metrics an asset keeps
# ----------------------------------------------------------------------------------------------
def _read_json(st: Storage, rel: str) -> Optional[dict]:
    try:
        data = json.loads(st.read_text(rel))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def known_settings(st: Storage, run_info: dict) -> dict[str, dict]:
    """{eval_hash: evaluation settings} for the hashes this run's records can carry: the run's own
    (run.json's config) and each earlier `sctd3d evaluate`'s (metrics/eval_settings/)."""
    out: dict[str, dict] = {}
    old_cfg = run_config(run_info)
    if old_cfg is not None:
        out[eval_hash(old_cfg)] = evaluation_settings(old_cfg)
        if run_info.get("eval_hash"):  # as recorded (new keys since then keep their old defaults)
            out.setdefault(str(run_info["eval_hash"]), evaluation_settings(old_cfg))
    for name in st.ls(SETTINGS_DIR):
        if name.endswith(".json"):
            data = _read_json(st, f"{SETTINGS_DIR}/{name}")
            if data is not None:
                out[name[:-len(".json")]] = data
    return out


def plan_metrics(rec: dict, new_settings: dict, wanted: list, known: dict[str, dict]
                 ) -> tuple[dict, dict]:
    """(keep, stale) for one record: metrics not recomputed whose value stays valid, and those
    whose settings changed since (with the keys that changed)."""
    keep: dict = {}
    stale: dict = {}
    old_settings = known.get(rec.get("eval_hash") or "")
    for m in PER_ASSET:
        v = rec.get(m)
        if m in wanted or v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if old_settings is None:
            stale[m] = {"value": v, "changed": ["the settings it was scored with are unknown"]}
            continue
        diff = changed(m, old_settings, new_settings)
        if diff:
            stale[m] = {"value": v, "changed": diff}
        else:
            keep[m] = v
    return keep, stale


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------
def _executor(cfg: Config, kind: str, address: Optional[str], num_workers: Optional[int],
              options: dict):
    """The executor as the registry builds it from the config (pipeline.executors)."""
    from common.plugins import load_plugins

    load_plugins()
    load_plugins(cfg.pipeline.plugins, source="pipeline.plugins")
    if kind not in executor_names():
        raise EvaluateError(f"--executor {kind!r} is not one of {executor_names()}")
    opts = executor_options(kind, cfg.pipeline, address=address, num_workers=num_workers, **options)
    return make_executor(kind, **opts)


def evaluate_run(root: str, cfg: Config, executor: str = "local", address: Optional[str] = None,
                 num_workers: Optional[int] = None, executor_options: Optional[dict] = None
                 ) -> EvaluateSummary:
    """Re-score every `done` asset of the run at `root` whose eval_hash differs (see the module)."""
    from pipeline.run import _StopOnSignals

    t0 = time.perf_counter()
    out = open_storage(root)
    run_info = _read_json(out, "run.json") or {}
    check_same_generation(cfg, run_info, manifest.read(out).to_pylist())
    if out.local:  # the run-level files evaluate writes must stay in the run too
        why = link_out_of_root(out.root_path, out.root_path, ("manifest", "manifest/parts", "metrics"))
        if why:
            raise EvaluateError(f"{why}; evaluate never writes outside the run: replace the link "
                                f"with a folder")
    try:
        lock = RunLock(out, stale_after_s=cfg.pipeline.lock_stale_s).acquire()
    except OSError as e:
        raise StorageError(f"cannot write to the run {root!r}: {e.strerror or e}; fix its "
                           f"permissions or free space") from e
    try:
        with _StopOnSignals() as signals:
            return _evaluate_locked(out, cfg, run_info, executor, address, num_workers,
                                    executor_options or {}, signals, t0)
    finally:
        lock.release()


def _evaluate_locked(out: Storage, cfg: Config, run_info: dict, executor: str,
                     address: Optional[str], num_workers: Optional[int], ex_options: dict,
                     signals: Any, t0: float) -> EvaluateSummary:
    new_eval, new_config = eval_hash(cfg), config_hash(cfg)
    new_settings = evaluation_settings(cfg)
    wanted = list(cfg.metrics.metrics)
    rows = [r for r in manifest.read(out).to_pylist() if r["status"] == "done"]
    known = known_settings(out, run_info)
    # what this eval_hash stands for, before any record carries it
    out.write_text(f"{SETTINGS_DIR}/{new_eval}.json", json.dumps(new_settings, indent=1,
                                                                  sort_keys=True, default=str))
    summary = EvaluateSummary(out=out.root, assets=len(rows), rescored=0, unchanged=0,
                              eval_hash=new_eval)
    per_asset: dict[str, dict] = {}
    todo: list[RescoreTask] = []
    by_id: dict[str, dict] = {}
    for r in rows:
        if r.get("eval_hash") == new_eval:
            summary.unchanged += 1
            per_asset[r["asset_id"]] = {"prompt": r["prompt"], **{k: r.get(k) for k in PER_ASSET}}
            continue
        keep, stale = plan_metrics(r, new_settings, wanted, known)
        todo.append(RescoreTask(cfg=cfg, root=out.root, asset_id=r["asset_id"], prompt=r["prompt"],
                                keep=keep, stale=stale))
        by_id[r["asset_id"]] = r
    log.info("evaluate %s: %d of %d done assets to re-score (eval_hash %s), executor %s", out.root,
             len(todo), len(rows), new_eval, executor)
    ex = _executor(cfg, executor, address, num_workers, ex_options)
    reached = 0
    try:
        if todo and not deadline.stop_requested():
            start = getattr(ex, "start", None) or getattr(ex, "_ensure_ray", None)
            if start is not None:
                start()              # ray.init replaces the SIGTERM handler ...
                signals.reinstall()  # ... so ours goes back on top
        for o in ex.map(todo, rescore_asset):
            task: RescoreTask = o.item
            if not o.ok and deadline.stop_requested():
                log.warning("interrupted %s (left as it was; re-scored on the re-run)", task.asset_id)
                break
            reached += 1
            if o.ok:
                rec = records.rescored_record(by_id[task.asset_id], o.value["values"],
                                              o.value["uris"], new_eval, new_config)
                records.commit(out, rec)  # last: the asset's new frames and metrics.json exist
                summary.rescored += 1
                per_asset[task.asset_id] = {"prompt": task.prompt, **o.value["values"],
                                            "stale": o.value["stale"], "worker": o.worker}
                for m in task.keep:
                    summary.kept[m] = summary.kept.get(m, 0) + 1
                for m in task.stale:
                    summary.stale[m] = summary.stale.get(m, 0) + 1
                log.info("re-scored %s %-40.40s %s", task.asset_id, task.prompt,
                         {k: v for k, v in o.value["values"].items() if k in PER_ASSET and v is not None})
            else:
                summary.failed[task.asset_id] = o.error or "unknown error"
                per_asset[task.asset_id] = {"prompt": task.prompt,
                                            **{k: by_id[task.asset_id].get(k) for k in PER_ASSET},
                                            "error": o.error}
                log.error("not re-scored %s (kept as it was): %s", task.asset_id, o.error)
            if deadline.stop_requested():
                break
    finally:
        ex.close()
    summary.interrupted = deadline.stop_requested()
    summary.left = len(todo) - reached
    for k in PER_ASSET:
        vals = [v[k] for v in per_asset.values() if isinstance(v.get(k), (int, float))
                and not (isinstance(v.get(k), float) and math.isnan(v[k]))]
        if vals:
            summary.means[k] = sum(vals) / len(vals)
    manifest.compact_locked(out)  # we hold the lock: later readers read one file
    fid_rec = None
    if not summary.interrupted:
        fid_rec = _fid(cfg, out, ex, executor)
        summary.fid = fid_rec.get("fid")
    summary.wall_s = time.perf_counter() - t0
    out.write_text(SUMMARY_FILE, json.dumps(
        {"summary": summary.as_dict(), "status": "interrupted" if summary.interrupted else "finished",
         "failed": summary.failed, "assets": per_asset}, indent=2,
        default=lambda x: None if (isinstance(x, float) and math.isnan(x)) else str(x)))
    _update_run_json(out, summary, fid_rec)  # last: the evaluation is complete
    log.info("evaluate %s: %d re-scored, %d unchanged, %d failed (%.1f s)", out.root,
             summary.rescored, summary.unchanged, len(summary.failed), summary.wall_s)
    return summary


def _fid(cfg: Config, out: Storage, ex: Any, executor: str) -> dict:
    """Run-level FID over the done assets' (new) frames; a skipped one says why. Written to
    metrics/fid.json by run_fid either way, so no stale FID survives an evaluation."""
    from pipeline.run import _on_worker
    from stages.metrics.fid import run_fid

    if not cfg.metrics.fid:  # (run_fid says the same, after loading the extractor's identity)
        rec = {"fid": None, "reason": "metrics.fid is false"}
        out.write_text("metrics/fid.json", json.dumps(rec, indent=2))
        return rec
    done = [r for r in manifest.read(out).to_pylist() if r["status"] == "done"]
    runner = functools.partial(_on_worker, ex) if executor == "ray" else None
    try:
        return run_fid(cfg, [asset_dir(out.root, r["asset_id"]) for r in done],
                       [r["prompt"] for r in done], out.root, run_on_worker=runner)
    except Exception as e:  # noqa: BLE001 - the per-asset scores stand; FID says why it is missing
        reason = f"FID failed: {type(e).__name__}: {' '.join(str(e).split())}"[:500]
        log.error("evaluate: %s", reason)
        rec = {"fid": None, "reason": reason}
        out.write_text("metrics/fid.json", json.dumps(rec, indent=2))
        return rec


def _update_run_json(out: Storage, summary: EvaluateSummary, fid_rec: Optional[dict]) -> None:
    info = _read_json(out, "run.json")
    if info is None:
        return
    if fid_rec is not None:
        info["fid"] = {k: fid_rec.get(k) for k in ("fid", "reason", "reference", "n_generated",
                                                   "n_reference") if k in fid_rec}
    elif summary.rescored:  # interrupted after re-scoring some: the old FID no longer holds
        info["fid"] = {"fid": None, "reason": f"sctd3d evaluate was stopped by "
                                              f"{summary.interrupted}; re-run it"}
        out.write_text("metrics/fid.json", json.dumps(info["fid"], indent=2))
    info["evaluate"] = {"eval_hash": summary.eval_hash, "finished_at": records.now().isoformat(),
                        "status": "interrupted" if summary.interrupted else "finished",
                        "rescored": summary.rescored, "failed": len(summary.failed),
                        "left": summary.left}
    out.write_text("run.json", json.dumps(info, indent=2, default=str))
