"""`sctd3d evaluate TARGET`: re-score existing assets under new evaluation settings, never regenerating.

TARGET is one asset directory (holding asset.ply and meta.json with its prompt) or a run: its
output root, its manifest/ folder or a manifest .parquet file.

A run is re-scored only with a config that would generate the same assets (same generation hash
as the run; otherwise `EvaluateError`: "this config would generate different assets; use sctd3d
run"). Every `done` asset whose recorded `eval_hash` differs from the config's (v1 records and
assets scored with a stage off have none) has its evaluation orbit re-rendered (old frames
removed first) and its metrics recomputed; asset.ply is only read. Its manifest record is then
rewritten with the new metrics, frame URIs, `eval_hash`, `evaluated_at` and `config_hash`: one
new part file per asset, written atomically and last, under the run lock, so a crash leaves the
old record (and a re-run redoes that asset). Assets already scored with these settings are left
alone. The summary goes to `metrics/evaluate.json` (and run-level FID to `metrics/fid.json`).

An asset directory is re-scored as before (rendered first when it has no frames, or always with
`pipeline.render`), results to its metrics.json.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import posixpath
from typing import Any, Optional

from common.config import Config, ConfigError, apply_overrides, config_hash, eval_hash
from common.storage import open_storage

log = logging.getLogger(__name__)


class EvaluateError(ValueError):
    """A run this config cannot re-score: it would generate different assets."""


def _asset_prompt(asset_dir: str) -> str:
    st = open_storage(asset_dir)
    if not st.exists("meta.json"):
        raise FileNotFoundError(f"evaluate: {asset_dir!r} has no meta.json (written by the generate stage) "
                                f"to take the prompt from")
    prompt = json.loads(st.read_text("meta.json")).get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"evaluate: {asset_dir}/meta.json has no 'prompt' string")
    return prompt


def evaluate_asset(cfg: Config, asset_dir: str, prompt: str | None = None,
                   rerender: bool = False) -> dict:
    """Render (if needed, or always with `rerender`) and score one asset; returns {metric: value}
    plus the render stage's URIs under '_render' when it rendered."""
    from stages.metrics import score_asset
    from stages.render import FRAMES_DIR, RenderResult, render_asset

    prompt = prompt or _asset_prompt(asset_dir)
    st = open_storage(asset_dir)
    rendered: Optional[RenderResult] = None
    if rerender:
        for name in st.ls(FRAMES_DIR):  # a shorter orbit must not leave the old orbit's frames
            st.rm(f"{FRAMES_DIR}/{name}")
    if rerender or cfg.pipeline.render or not st.ls(FRAMES_DIR):
        rendered = render_asset(cfg, asset_dir, prompt)
    out = dict(score_asset(cfg, asset_dir, prompt))
    if rendered is not None:
        out["_render"] = rendered.uris()
    return out


def _run_root(target: str) -> str | None:
    """The run's output root when `target` names a run, its manifest folder or a manifest file."""
    t = target.rstrip("/")
    if t.endswith(".parquet"):
        t = posixpath.dirname(t)
        if posixpath.basename(t) == "parts":
            t = posixpath.dirname(t)
    if posixpath.basename(t) == "manifest":
        t = posixpath.dirname(t)
    st = open_storage(t)
    return t if st.exists("manifest") else None


def _asset_generation_hash(cfg: Config) -> str:
    from stages.generation_id import generation_hash

    return generation_hash(cfg)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'key: old -> new' for each differing leaf of two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_same_generation(cfg: Config, run_info: dict, records: list[dict]) -> None:
    """Refuse (EvaluateError) a config whose generation hash differs from the run's.

    The run's hash comes from run.json (`generation_hash`; for runs before schema v2 it is computed
    from run.json's `config` with today's prior weights), else from the records' `generation_hash`."""
    new = _asset_generation_hash(cfg)
    old_cfg = None
    if isinstance(run_info.get("config"), dict):
        try:
            old_cfg = apply_overrides(Config(), run_info["config"], "run.json config")
        except ConfigError as e:
            log.warning("evaluate: cannot read the run's config from run.json (%s)", e)
    if run_info.get("generation_hash"):
        known = {run_info["generation_hash"]}
    elif old_cfg is not None:
        known = {_asset_generation_hash(old_cfg)}
    else:
        known = {r["generation_hash"] for r in records if r.get("generation_hash")}
    if not known:
        raise EvaluateError("cannot tell which settings generated this run (no run.json and no "
                            "generation_hash in its records); re-score single asset directories instead")
    if new in known:
        return
    from stages.generation_id import generation_settings

    diff = _differences(generation_settings(old_cfg), generation_settings(cfg)) if old_cfg else []
    why = f" ({'; '.join(diff[:5])}{'; ...' if len(diff) > 5 else ''})" if diff else \
        (" (the prior's weights differ)" if old_cfg is not None else "")
    raise EvaluateError(f"this config would generate different assets{why}; use sctd3d run")


def _clean(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else x


def evaluate(target: str, cfg: Config) -> dict:
    """Re-score an asset directory, or every `done` asset of a run whose eval_hash differs."""
    if "://" not in target and not os.path.exists(target):
        raise FileNotFoundError(f"evaluate: {target!r} does not exist; give an asset directory or a run "
                                f"(output root, manifest/ or a manifest .parquet)")
    st = open_storage(target) if not target.endswith(".parquet") else None
    if st is not None and st.exists("asset.ply"):
        scores = evaluate_asset(cfg, target)
        scores.pop("_render", None)
        return {"assets": 1, **scores}
    root = _run_root(target)
    if root is None:
        raise FileNotFoundError(f"evaluate: {target!r} is neither an asset directory (with asset.ply) nor a "
                                f"run (output root, manifest/ or a manifest .parquet)")
    return _evaluate_run(root, cfg)


def _evaluate_run(root: str, cfg: Config) -> dict:
    from common import manifest
    from common.lock import RunLock
    from common.storage import asset_dir
    from stages.metrics import PER_ASSET

    out = open_storage(root)
    run_info = json.loads(out.read_text("run.json")) if out.exists("run.json") else {}
    check_same_generation(cfg, run_info, manifest.read(out).to_pylist())
    new_eval, new_config = eval_hash(cfg), config_hash(cfg)
    columns = [k for k in PER_ASSET if k in manifest.COLUMNS]
    lock = RunLock(out, stale_after_s=cfg.pipeline.lock_stale_s).acquire()
    try:
        rows = [r for r in manifest.read(out).to_pylist() if r["status"] == "done"]
        per_asset: dict[str, dict] = {}
        rescored = 0
        for r in rows:
            if r.get("eval_hash") == new_eval:
                per_asset[r["asset_id"]] = {"prompt": r["prompt"], **{k: r.get(k) for k in columns}}
                continue
            adir = asset_dir(root, r["asset_id"])
            scores = evaluate_asset(cfg, adir, r["prompt"], rerender=True)
            rendered = scores.pop("_render", None) or {}
            rec = dict(r)
            rec.update({k: _clean(scores.get(k)) for k in columns})
            rec.update({k: rendered.get(k) for k in ("frames_uri", "video_uri", "sheet_uri")})
            rec.update(eval_hash=new_eval, config_hash=new_config,
                       evaluated_at=dt.datetime.now(dt.timezone.utc))
            manifest.commit(out, rec)  # last: the asset's new frames and metrics exist
            rescored += 1
            per_asset[r["asset_id"]] = {"prompt": r["prompt"], **scores}
        summary: dict = {"assets": len(rows), "rescored": rescored, "unchanged": len(rows) - rescored,
                         "eval_hash": new_eval}
        for k in sorted({k for v in per_asset.values() for k in v if k != "prompt"}):
            vals = [v[k] for v in per_asset.values() if isinstance(v.get(k), (int, float))
                    and not (isinstance(v.get(k), float) and math.isnan(v[k]))]
            summary[f"mean_{k}"] = (sum(vals) / len(vals)) if vals else None
        if cfg.metrics.fid and rows:
            from stages.metrics.fid import run_fid

            summary["fid"] = run_fid(cfg, [asset_dir(root, r["asset_id"]) for r in rows],
                                     [r["prompt"] for r in rows], root)["fid"]
        out.write_text("metrics/evaluate.json", json.dumps(
            {"summary": summary, "assets": per_asset}, indent=2, default=lambda x: None if
            (isinstance(x, float) and math.isnan(x)) else str(x)))
    finally:
        lock.release()
    log.info("evaluate %s: %d of %d done assets re-scored (eval_hash %s)", root, rescored, len(rows),
             new_eval)
    return summary
