"""`sctd3d export` speed: seconds and bytes per asset (the full per-asset work: render RGBA +
depth, PNG encoding, transforms files, the splat formats; bytes = the asset folder and the asset's
WebDataset sample), by default at the CPU default (24 views at 256 px, torch renderer; on a GPU:
`--views 120 --res 512 --backend gsplat`, the GPU default) and, for 1,000 synthetic assets, the time
of the run-level index (Parquet) and dataset card.

    .venv/bin/python benchmarks/bench_export.py [--views 24] [--res 256] [--gaussians 2000]
        [--assets 1000] [--backend torch] [--formats ply,spz]

The asset is a toy-world-sized scene (the toy ball init: 2,000 Gaussians of radius ~0.6 seen on
the demo config's orbit).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.gaussians import Gaussians, rgb_to_sh0  # noqa: E402
from kernels.ply import save_ply  # noqa: E402
from common.storage import open_storage  # noqa: E402
from stages.export import card, index  # noqa: E402
from stages.export.asset import ExportSpec, build_asset  # noqa: E402
from stages.export.splat_transform import find_splat_transform  # noqa: E402
from stages.export.views import rgba_png  # noqa: E402


def toy_asset(n: int, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = 0.6 * d * torch.rand(n, 1, generator=g) ** (1 / 3)
    gs = Gaussians(means, math.log(0.03) + 0.3 * torch.randn(n, 3, generator=g),
                   torch.randn(n, 4, generator=g), torch.randn(n, generator=g) + 1.0,
                   rgb_to_sh0(torch.rand(n, 1, 3, generator=g)))
    buf = io.BytesIO()
    save_ply(buf, gs)
    return buf.getvalue()


def bench_asset(views: int, res: int, n: int, formats: tuple,
                backend: str = "torch") -> tuple[float, float, int, int]:
    """(seconds for the whole asset, of which rendering, bytes of its folder, bytes of its
    WebDataset sample)."""
    from stages.export import formats as fmt_registry
    from stages.export import shards
    from kernels.ply import load_ply
    from stages.export.views import orbit, render_rgba_depth

    ply = toy_asset(n)
    spec = ExportSpec(views=views, resolution=res, formats=formats, elevation_deg=15.0,
                      radius=2.75, fovy=0.65, backend=backend)
    t = time.perf_counter()
    files, _ = build_asset("0" * 16, ply, spec)
    total = time.perf_counter() - t
    t = time.perf_counter()
    render_rgba_depth(load_ply(io.BytesIO(ply)), orbit(views, res, 15.0, 2.75, 0.65), backend)
    t_render = time.perf_counter() - t
    buf = io.BytesIO()
    shards.write_shard(buf, [("0" * 16, "a prompt", "{}", sorted(files))],
                       lambda a, rel: files[rel], fmt_registry.member_keys(formats),
                       lambda a: sorted(f for f in files if f.startswith("depth/")), 1e-3)
    return total, t_render, sum(len(v) for v in files.values()), len(buf.getvalue())


def bench_index_card(n_assets: int) -> tuple[float, float]:
    from pipeline.export import build_card

    rows = [{"asset_id": f"{i:016x}", "prompt": f"prompt {i}", "seed": i, "method": "sds",
             "prior": "toy_sd", "config_hash": "cafe0123", "code_version": "0.1.0",
             "status": "done", "clip_l": 0.25 + 0.0001 * i, "image_reward": -1 + 0.002 * i,
             "toy_psnr": 10 + 0.01 * i, "toy_rprec": None, "num_gaussians": 2000,
             "num_views": 120, "num_random_views": 0,
             "asset_dir": f"assets/{i:016x}",
             "ply_path": None, "spz_path": None, "transforms_path": None,
             "preview_path": f"previews/{i:016x}.png", "shard": f"shards/shard-{i // 256:05d}.tar",
             "ply_sha256": "0" * 64} for i in range(n_assets)]
    with tempfile.TemporaryDirectory() as tmp:
        st = open_storage(tmp)
        img = torch.zeros(64, 64, 4, dtype=torch.uint8)
        img[16:48, 16:48] = torch.tensor([200, 80, 40, 255], dtype=torch.uint8)
        for r in sorted(rows, key=lambda r: r["asset_id"])[:card.GRID_MAX]:
            st.write_bytes(r["preview_path"], rgba_png(img.numpy()))
        t = time.perf_counter()
        index.parquet_bytes(index.index_table(rows))
        t_index = time.perf_counter() - t
        t = time.perf_counter()
        build_card(st, tmp, {"config": {"deviations": ["toy world"]}}, "status = 'done'",
                   {"done": n_assets, "failed": 0, "rejected": 0}, n_assets, rows, [],
                   ExportSpec(), math.ceil(n_assets / 256), (10 ** 9, 0))
        t_card = time.perf_counter() - t
    return t_index, t_card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--res", default="256")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--formats", default="")
    ap.add_argument("--gaussians", type=int, default=2000)
    ap.add_argument("--assets", type=int, default=1000)
    args = ap.parse_args()
    formats = (tuple(args.formats.split(",")) if args.formats else
               ("ply", "spz") if find_splat_transform() else ("ply",))
    print(f"machine: {platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}; formats {formats}")
    for res in (int(r) for r in args.res.split(",")):
        s, s_render, size, sample = bench_asset(args.views, res, args.gaussians, formats,
                                                args.backend)
        print(f"per asset, {args.views} views at {res} px, {args.gaussians} Gaussians, "
              f"{args.backend}: {s:.2f} s ({s / args.views * 1000:.0f} ms/view; rendering alone "
              f"{s_render:.2f} s; {size / 1e6:.2f} MB of files, {sample / 1e6:.2f} MB in a shard)")
    t_index, t_card = bench_index_card(args.assets)
    print(f"{args.assets} assets: index {t_index:.3f} s, card (README + plot + grid) {t_card:.3f} s")


if __name__ == "__main__":
    main()
