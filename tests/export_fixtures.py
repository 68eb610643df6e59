"""A synthetic finished run for the export tests: manifest records (common.manifest writer),
run.json with the demo config, and small .ply assets (plus a missing and a truncated one)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import torch

from kernels.gaussians import Gaussians, rgb_to_sh0
from kernels.ply import save_ply
from common import manifest
from common.config import load_config, resolve_config_path, to_dict


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes): what "left as it was" is checked against."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def blob_scene(seed: int, n: int = 150, sh_degree: int = 0) -> Gaussians:
    """A small coloured blob of Gaussians around the origin (object scale, like toy assets)."""
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    sh = torch.zeros(n, k, 3)
    sh[:, 0] = rgb_to_sh0(torch.rand(n, 3, generator=g))
    if k > 1:
        sh[:, 1:] = 0.05 * torch.randn(n, k - 1, 3, generator=g)
    return Gaussians(means=0.35 * torch.randn(n, 3, generator=g),
                     log_scales=torch.full((n, 3), -2.6) + 0.3 * torch.randn(n, 3, generator=g),
                     quats=torch.randn(n, 4, generator=g),
                     opacity_logits=1.5 + torch.randn(n, generator=g), sh=sh, sh_degree=sh_degree)


def asset_id(i: int) -> str:
    return hashlib.sha256(f"asset-{i}".encode()).hexdigest()[:16]


def make_run(root: Path, n_done: int = 3, missing: bool = False, truncated: bool = False,
             failed: bool = True, scenes: dict[int, Gaussians] | None = None) -> Path:
    """Write a run folder; returns it. Asset i's clip_l is 0.2 + 0.05 i."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(resolve_config_path("demo.yaml"))
    (root / "run.json").write_text(json.dumps({"status": "finished", "config": to_dict(cfg)},
                                              default=str))
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    specs = [(i, "done") for i in range(n_done)]
    if missing:
        specs.append((100, "missing"))
    if truncated:
        specs.append((101, "truncated"))
    if failed:
        specs.append((102, "failed"))
    for i, kind in specs:
        aid = asset_id(i)
        adir = root / "assets" / aid[:2] / aid
        adir.mkdir(parents=True, exist_ok=True)
        ply = adir / "asset.ply"
        if kind in ("done", "truncated"):
            save_ply(str(ply), (scenes or {}).get(i) or blob_scene(i))
        if kind == "truncated":
            ply.write_bytes(ply.read_bytes()[: ply.stat().st_size // 2])
        status = "failed" if kind == "failed" else "done"
        manifest.commit(str(root), {
            "asset_id": aid, "prompt": f"prompt number {i}", "seed": i, "method": "sds",
            "prior": "toy_sd", "config_hash": "cafe0123", "code_version": "0.1.0+test",
            "status": status, "error": "boom" if status == "failed" else None, "attempts": 1,
            "finished_at": now, "asset_uri": str(ply) if status == "done" else None,
            "clip_l": 0.2 + 0.05 * i if status == "done" else None,
            "toy_psnr": 10.0 + i if status == "done" else None, "num_gaussians": 150})
    return root
