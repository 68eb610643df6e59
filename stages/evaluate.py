"""Re-scoring existing assets under new evaluation settings, never regenerating: the per-asset work.

`sctd3d evaluate TARGET`: TARGET is one asset directory (holding asset.ply and meta.json with its
prompt; re-scored here, results to its metrics.json) or a run (its output root, manifest/ folder
or a manifest .parquet file), which pipeline/evaluate.py orchestrates: a config that would
generate other assets is refused (`check_same_generation`), and every `done` asset whose
`eval_hash` differs becomes a `RescoreTask` for an executor, running `rescore_asset` here.

`rescore_asset` never leaves an asset half-updated and never writes outside the run:
- an asset folder, or its frames/, sheet, video or metrics.json, that is a symlink leading out of
  the run root is refused (`UnsafeAsset`, recorded as the asset's failure; nothing is touched);
- the new orbit is rendered and scored in a hidden staging folder inside the asset folder
  (`.tmp-evaluate-*`, holding a hard link to asset.ply), and swapped in only when its scores are
  written: frames/ by one atomic exchange of the two folders (renameat2 RENAME_EXCHANGE; two
  renames where the file system lacks it), the files by os.replace. The old frames exist until
  then, so a stop, a missing asset.ply or a metric that cannot load leaves the asset as it was;
- a stop request (SIGINT/SIGTERM at the driver, common.deadline) is checked between steps.
asset.ply is only read.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from common import deadline
from common.config import Config, ConfigError, apply_overrides, evaluation_settings
from common.storage import Storage, asset_dir as asset_dir_of, open_storage

log = logging.getLogger(__name__)

STAGING_PREFIX = ".tmp-evaluate-"


class EvaluateError(ValueError):
    """A run this config cannot re-score: it would generate different assets."""


class UnsafeAsset(ValueError):
    """An asset whose folder or outputs are links out of the run root: evaluate will not touch it."""


def _asset_prompt(asset_dir: str) -> str:
    st = open_storage(asset_dir)
    if not st.exists("meta.json"):
        raise FileNotFoundError(f"evaluate: {asset_dir!r} has no meta.json (written by the generate stage) "
                                f"to take the prompt from")
    prompt = json.loads(st.read_text("meta.json")).get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"evaluate: {asset_dir}/meta.json has no 'prompt' string")
    return prompt


def evaluate_asset(cfg: Config, asset_dir: str, prompt: str | None = None) -> dict:
    """`sctd3d evaluate ASSET_DIR`: render (with `pipeline.render`, or when it has no frames) and
    score one asset directory in place; returns {metric: value} plus the render stage's URIs under
    '_render' when it rendered. (Runs are re-scored through `rescore_asset`.)"""
    from stages.metrics import score_asset
    from stages.render import FRAMES_DIR, RenderResult, render_asset

    prompt = prompt or _asset_prompt(asset_dir)
    st = open_storage(asset_dir)
    rendered: Optional[RenderResult] = None
    if cfg.pipeline.render or not st.ls(FRAMES_DIR):
        rendered = render_asset(cfg, asset_dir, prompt)
    out = dict(score_asset(cfg, asset_dir, prompt))
    if rendered is not None:
        out["_render"] = rendered.uris()
    return out


def run_root(target: str) -> str | None:
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


def run_config(run_info: dict) -> Optional[Config]:
    """The config run.json records (None when absent or unreadable)."""
    if not isinstance(run_info.get("config"), dict):
        return None
    try:
        return apply_overrides(Config(), run_info["config"], "run.json config")
    except ConfigError as e:
        log.warning("evaluate: cannot read the run's config from run.json (%s)", e)
        return None


def check_same_generation(cfg: Config, run_info: dict, records: list[dict]) -> None:
    """Refuse (EvaluateError) a config whose generation hash differs from the run's.

    The run's hash comes from run.json (`generation_hash`; for runs before schema v2 it is computed
    from run.json's `config` with today's prior weights), else from the records' `generation_hash`."""
    new = _asset_generation_hash(cfg)
    old_cfg = run_config(run_info)
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


# ----------------------------------------------------------------------------------------------
# One asset of a run (the executor's unit)
# ----------------------------------------------------------------------------------------------
@dataclass
class RescoreTask:
    """What a worker needs to re-score one asset (small and picklable)."""

    cfg: Config
    root: str            # the run's output root
    asset_id: str
    prompt: str
    keep: dict = field(default_factory=dict)    # metric -> value still valid (not recomputed)
    stale: dict = field(default_factory=dict)   # metric -> {"value": old, "changed": [...]}


def link_out_of_root(root: str, adir: str, names: tuple[str, ...]) -> str:
    """'' when the asset folder and `names` inside it resolve inside the run root, else the first
    one that does not, with its target (local folders only; object stores have no links)."""
    real_root = os.path.realpath(root)
    for name in ("",) + names:
        p = os.path.join(adir, name) if name else adir
        if name and not os.path.lexists(p):
            continue
        real = os.path.realpath(p)
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            return f"{name or 'the asset folder'} is a link out of the run ({p} -> {real})"
    return ""


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _swap_in_local(staging: str, adir: str, names: list[str]) -> None:
    """Move each of `names` from `staging` into `adir` (replacing what is there; the old one ends
    up in `staging`, removed with it)."""
    for name in names:
        new, final = os.path.join(staging, name), os.path.join(adir, name)
        if os.path.isdir(new) and os.path.lexists(final):
            if not _exchange(new, final):
                aside = os.path.join(staging, f"{name}.old")
                os.replace(final, aside)
                os.replace(new, final)
        else:
            os.replace(new, final)


def _swap_in_remote(st: Storage, staging: str, names: list[str]) -> None:
    """Object stores (no rename): copy each staged file over its final name, then drop the old
    orbit's extra frames. The record, committed after this, is what marks the asset re-scored."""
    from stages.render import FRAMES_DIR

    for name in names:
        files = [f for f in st.walk_files(staging, name)] if name == FRAMES_DIR else \
            [posixpath.join(staging, name)]
        for f in files:
            rel = posixpath.relpath(f, staging)
            st.fs.copy(st.path(f), st.path(rel))
        if name == FRAMES_DIR:
            keep = {posixpath.basename(f) for f in files}
            for old in st.ls(FRAMES_DIR):
                if old not in keep:
                    st.rm(f"{FRAMES_DIR}/{old}")


def _remove_staging(st: Storage, rel: str) -> None:
    if st.local:
        shutil.rmtree(st.path(rel), ignore_errors=True)
    elif st.fs.exists(st.path(rel)):
        st.fs.rm(st.path(rel), recursive=True)


def _leftover_staging(st: Storage) -> list[str]:
    """Staging folders of an earlier attempt killed mid-way (hidden from `ls`)."""
    if st.local:
        return [n for n in os.listdir(st.root_path) if n.startswith(STAGING_PREFIX)] \
            if os.path.isdir(st.root_path) else []
    try:
        return [posixpath.basename(p.rstrip("/")) for p in st.fs.ls(st.root_path, detail=False)
                if posixpath.basename(p.rstrip("/")).startswith(STAGING_PREFIX)]
    except FileNotFoundError:
        return []


def rescore_asset(task: RescoreTask) -> dict:
    """Render the evaluation orbit of one asset of a run and score it, in a staging folder swapped
    in at the end. Returns {"values": per-asset columns (+ toy companions), "reasons", "stale",
    "uris"}; raises (the asset's failure, recorded by the driver) leaving the asset as it was."""
    from stages.metrics import METRICS_FILE, score_asset
    from stages.metrics.settings import READS, metric_hash
    from stages.render import (ASSET_FILE, FRAMES_DIR, SHEET_FILE, VIDEO_GIF, VIDEO_MP4,
                               render_asset)

    cfg = task.cfg
    adir = asset_dir_of(task.root, task.asset_id)
    outputs = (FRAMES_DIR, SHEET_FILE, VIDEO_MP4, VIDEO_GIF, METRICS_FILE)
    st = open_storage(adir)
    if st.local:
        why = link_out_of_root(open_storage(task.root).root_path, st.root_path, outputs)
        if why:
            raise UnsafeAsset(f"{why}; evaluate never writes outside the run: replace the link "
                              f"with a folder (or remove it) and re-run")
    for old in _leftover_staging(st):
        _remove_staging(st, old)
    if not st.exists(ASSET_FILE):
        raise FileNotFoundError(f"no {ASSET_FILE} in {adir}; the asset's files are gone "
                                f"(`sctd3d run` regenerates a done asset whose files are missing)")
    deadline.check("evaluate: before rendering")
    staging = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        if st.local:
            os.makedirs(st.path(staging))
            try:
                os.link(st.path(ASSET_FILE), st.path(staging, ASSET_FILE))
            except OSError:
                shutil.copyfile(st.path(ASSET_FILE), st.path(staging, ASSET_FILE))
        else:
            st.fs.copy(st.path(ASSET_FILE), st.path(staging, ASSET_FILE))
        sdir = st.uri(staging)
        rendered = render_asset(cfg, sdir, task.prompt)
        deadline.check("evaluate: after rendering")
        scores = score_asset(cfg, sdir, task.prompt)
        deadline.check("evaluate: after scoring")
        values = {**dict(scores), **task.keep}
        reasons = {k: v for k, v in scores.reasons.items() if k not in task.keep}
        for m, s in task.stale.items():
            reasons[m] = (f"stale: scored with other settings ({'; '.join(s['changed'][:3])}); add "
                          f"{m} to metrics.metrics and re-run sctd3d evaluate")
        settings = evaluation_settings(cfg)
        body = {"prompt": task.prompt, "values": values, "reasons": reasons,
                "stale": {m: s.get("value") for m, s in task.stale.items()},
                "settings": {m: metric_hash(m, settings) for m in READS if values.get(m) is not None},
                "kept": sorted(task.keep)}
        open_storage(sdir).write_text(METRICS_FILE, json.dumps(body, indent=2, default=str))
        video = posixpath.basename(rendered.video_uri) if rendered.video_uri else None
        names = [FRAMES_DIR, SHEET_FILE, METRICS_FILE] + ([video] if video else [])
        (_swap_in_local(st.path(staging), st.root_path, names) if st.local
         else _swap_in_remote(st, staging, names))
        other = {VIDEO_MP4: VIDEO_GIF, VIDEO_GIF: VIDEO_MP4}.get(video or "")
        if other and st.exists(other):  # the other encoding of an older orbit
            st.rm(other)
    finally:
        _remove_staging(st, staging)
    uris = {"frames_uri": st.uri(FRAMES_DIR), "sheet_uri": st.uri(SHEET_FILE),
            "video_uri": st.uri(video) if video else None}
    return {"values": values, "reasons": reasons, "stale": sorted(task.stale), "uris": uris}
