"""`sctd3d evaluate TARGET`: re-score existing assets with the current metric config.

TARGET is one asset directory (holding asset.ply and meta.json with its prompt) or a run: its
output root, its manifest/ folder or a manifest .parquet file. Frames are rendered first when an
asset has none (or always, with `pipeline.render`), so a metric config change never needs a
regeneration. Results go to each asset's metrics.json and, for a run, `metrics/evaluate.json`
(and run-level FID to `metrics/fid.json`); the committed manifest records are not rewritten.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath

from pipeline.config import Config
from pipeline.storage import open_storage

log = logging.getLogger(__name__)


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
    """Render (if needed) and score one asset; returns {metric: value}."""
    from stages.metrics import score_asset
    from stages.render import FRAMES_DIR, render_asset

    prompt = prompt or _asset_prompt(asset_dir)
    if cfg.pipeline.render or not open_storage(asset_dir).ls(FRAMES_DIR):
        render_asset(cfg, asset_dir, prompt)
    return dict(score_asset(cfg, asset_dir, prompt))


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


def evaluate(target: str, cfg: Config) -> dict:
    """Re-score an asset directory or every `done` asset of a run; returns a summary dict."""
    if "://" not in target and not os.path.exists(target):
        raise FileNotFoundError(f"evaluate: {target!r} does not exist; give an asset directory or a run "
                                f"(output root, manifest/ or a manifest .parquet)")
    st = open_storage(target) if not target.endswith(".parquet") else None
    if st is not None and st.exists("asset.ply"):
        scores = evaluate_asset(cfg, target)
        return {"assets": 1, **scores}
    root = _run_root(target)
    if root is None:
        raise FileNotFoundError(f"evaluate: {target!r} is neither an asset directory (with asset.ply) nor a "
                                f"run (output root, manifest/ or a manifest .parquet)")
    from pipeline import manifest
    from pipeline.storage import asset_dir

    rows = [r for r in manifest.read(root).to_pylist() if r["status"] == "done"]
    per_asset = {}
    for r in rows:
        adir = asset_dir(root, r["asset_id"])
        per_asset[r["asset_id"]] = {"prompt": r["prompt"], **evaluate_asset(cfg, adir, r["prompt"])}
    summary: dict = {"assets": len(rows)}
    for k in sorted({k for v in per_asset.values() for k in v if k != "prompt"}):
        vals = [v[k] for v in per_asset.values() if isinstance(v.get(k), (int, float))]
        summary[f"mean_{k}"] = (sum(vals) / len(vals)) if vals else None
    if cfg.metrics.fid and rows:
        from stages.metrics.fid import run_fid

        summary["fid"] = run_fid(cfg, [asset_dir(root, r["asset_id"]) for r in rows],
                                 [r["prompt"] for r in rows], root)["fid"]
    out = open_storage(root)
    out.write_text("metrics/evaluate.json", json.dumps(
        {"summary": summary, "assets": per_asset}, indent=2, default=lambda x: None if
        (isinstance(x, float) and math.isnan(x)) else str(x)))
    return summary
