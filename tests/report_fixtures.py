"""Synthetic run directories for the report tests (manifest parts in the current manifest schema).

Metric values are drawn from a seeded generator: a per-prompt "difficulty" shared by all runs
(so pairing matters) plus per-run noise plus an optional shift, exactly what a nightly sees.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from common import manifest  # the one schema: rows go through manifest.to_table / make_record


def make_run(root: str, *, n_prompts: int = 24, methods=("sctd",), seeds=(0,), day: int = 0,
             shift: dict | None = None, noise: float = 0.3, noise_seed: int = 1,
             fail: set | None = None, images: bool = True, compact: bool = False,
             metric_cols=("clip_l", "toy_psnr", "toy_rprec"), gen_hash: str | None = None,
             prompt_fmt: str = "toy object {p:02d}", video: bool = False) -> str:
    """Write a run at `root` (manifest/parts/*.parquet, sheet.png per done asset); return root."""
    shift = shift or {}
    fail = fail or set()
    rng = np.random.default_rng(noise_seed)
    difficulty = np.random.default_rng(12345).normal(0.0, 3.0, size=n_prompts)  # shared by runs
    t0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.timezone.utc) + dt.timedelta(days=day)
    rows = []
    for p in range(n_prompts):
        for s in seeds:
            for m in methods:
                prompt = prompt_fmt.format(p=p)
                aid = hashlib.sha1(f"{prompt}|{s}|{m}".encode()).hexdigest()[:16]
                failed = (p, s, m) in fail or p in fail
                rel = f"assets/{aid[:2]}/{aid}"
                base = {"clip_l": 25.0 + difficulty[p], "image_reward": 0.1 * difficulty[p],
                        "toy_psnr": 20.0 + difficulty[p], "toy_rprec": 0.5 + 0.05 * difficulty[p]}
                scale = {"clip_l": 1.0, "image_reward": 0.1, "toy_psnr": 1.0, "toy_rprec": 0.03}
                vals = {}
                for k in ("clip_l", "image_reward", "toy_psnr", "toy_rprec"):
                    v = base[k] + noise * scale[k] * rng.normal() + shift.get(k, 0.0)
                    vals[k] = None if (failed or k not in metric_cols) else float(v)
                start = t0 + dt.timedelta(minutes=3 * len(rows))
                rows.append({
                    "asset_id": aid, "prompt": prompt, "seed": s, "method": m, "prior": "toy_sd",
                    "config_hash": "cafe0000", "generation_hash": gen_hash,
                    "code_version": f"v{day}", "status": "failed" if failed else "done",
                    "error": "RuntimeError: NaN loss at iteration 120\ntraceback..." if failed else None,
                    "attempts": 3 if failed else 1, "started_at": start,
                    "finished_at": start + dt.timedelta(seconds=150), "wall_s": 150.0, "gpu_s": 0.0,
                    "device": "cpu", "num_gaussians": 2000, "asset_uri": None if failed else f"{rel}/asset.ply",
                    "frames_uri": None if failed else f"{rel}/frames",
                    "video_uri": f"{rel}/turntable.mp4" if video and not failed else None,
                    **vals})
                if images and not failed:
                    d = os.path.join(root, rel)
                    os.makedirs(d, exist_ok=True)
                    arr = np.zeros((32, 256, 3), np.uint8)
                    arr[..., 0] = (np.arange(256) * (p + 1)) % 256
                    arr[8:24, 16 * (p % 8):16 * (p % 8) + 48, 1] = 200
                    Image.fromarray(arr).save(os.path.join(d, "sheet.png"))
    parts = os.path.join(root, "manifest", "parts")
    os.makedirs(parts, exist_ok=True)
    if compact:
        pq.write_table(manifest.to_table(rows), os.path.join(root, "manifest", "manifest.parquet"))
    else:
        for r in rows:
            pq.write_table(manifest.to_table([r]), os.path.join(parts, f"{r['asset_id']}.parquet"))
    with open(os.path.join(root, "run.json"), "w") as fh:
        json.dump({"started_at": t0.isoformat(), "config_hash": "cafe0000"}, fh)
    return root


def make_splat_run(root: str, *, n_prompts: int = 3, day: int = 0, scene_seed: int = 0,
                   shift: dict | None = None, resolution: int = 64, num_views: int = 4,
                   prompt_fmt: str = "toy object {p:02d}", noise_seed: int = 1) -> str:
    """A run whose done assets are real: asset.ply (a small Gaussian blob per prompt), meta.json
    with term summaries, and frames/sheet/turntable rendered by the render stage itself on the
    run.json config's evaluation orbit (what the report's 3D viewer must reproduce)."""
    from common.config import Config, to_dict
    from export_fixtures import blob_scene
    from kernels.ply import save_ply
    from stages.render import render_asset

    make_run(root, n_prompts=n_prompts, day=day, shift=shift, noise_seed=noise_seed, images=False,
             prompt_fmt=prompt_fmt, video=True)
    cfg = Config()
    cfg.render.resolution, cfg.render.num_views, cfg.render.sheet_views = resolution, num_views, num_views
    _, df = manifest_rows(root)
    for _, r in df.iterrows():
        d = os.path.join(root, os.path.dirname(str(r["asset_uri"])))
        os.makedirs(d, exist_ok=True)
        p = int(str(r["prompt"])[-2:]) if str(r["prompt"])[-2:].isdigit() else 0
        g = blob_scene(100 * p + scene_seed, n=200)
        save_ply(os.path.join(d, "asset.ply"), g)
        render_asset(cfg, d, str(r["prompt"]))
        with open(os.path.join(d, "meta.json"), "w") as fh:
            json.dump({"prompt": str(r["prompt"]), "iterations": 100, "num_gaussians": g.num(),
                       "terms": {"sds_norm": {"first10pct": 3.0, "median": 1.5, "last10pct": 0.7, "mean": 1.6,
                                              "min": 0.5, "max": 4.0}}}, fh)
    with open(os.path.join(root, "run.json")) as fh:
        info = json.load(fh)
    info["config"] = to_dict(cfg)
    with open(os.path.join(root, "run.json"), "w") as fh:
        json.dump(info, fh, default=str)
    return root


def manifest_rows(root: str):
    from stages.report import read_manifest

    return read_manifest(root)
