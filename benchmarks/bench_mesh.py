"""Mesh export (`--formats glb`) per toy catalogue object on CPU: seconds, peak memory, fidelity.

    python benchmarks/bench_mesh.py [--objects red_cube,red_sphere,red_torus] [--mesh KEY=VALUE ...]

Per object: the catalogue's Gaussians (the toy world's ground-truth splats) -> the GLB at the
MeshConfig defaults (128^3 grid, 1e5 faces, 1024^2 texture, baked from 3 x 24 views at 256 px),
timed end to end (grid, marching cubes, decimation, xatlas, bake, GLB bytes), then fidelity on the
export orbit (8 views, elevation 15, radius 3.5, fovy 0.6): mask IoU and PSNR (over white) of the
mesh vs the splat renders. Splats are the truth here, so "PSNR within 2 dB of splat-vs-truth"
reads as mesh-vs-splat PSNR. CPU s = process CPU time (all threads): on a shared machine the
wall time depends on the load; on a quiet machine wall ~ CPU s / threads. Peak memory = the process's peak RSS (ru_maxrss) after each object.
Prints a markdown table for benchmarks/RESULTS.md ("Meshes").
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import time

import yaml

from common.config import mesh_config
from stages.export.formats.base import SplatAsset
from stages.export.formats.glb import glb_bytes
from stages.toyworld.catalogue import build_object


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", default="red_cube,red_sphere,red_torus")
    ap.add_argument("--mesh", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    opts = {k: yaml.safe_load(v) for k, _, v in (m.partition("=") for m in a.mesh)}
    cfg = mesh_config(opts)
    print(f"MeshConfig {cfg}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"{dt.date.today()}")
    print("| object | Gaussians | s/asset (wall) | CPU s/asset | peak RSS GB | faces | vertices | watertight | "
          "GLB MB | mask IoU | PSNR dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.objects.split(","):
        g = build_object(name)
        asset = SplatAsset(asset_id=name, ply=b"", gaussians=g, prompt=name,
                           options={"mesh": opts, "orbit": {}})
        t0, c0 = time.perf_counter(), time.process_time()
        data, st = glb_bytes(asset)
        s, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"| {name} | {g.num():,} | {s:.1f} | {cpu:.1f} | {rss:.2f} | {st['mesh_faces']:,} | "
              f"{st['mesh_vertices']:,} | {st['mesh_watertight']} | {len(data) / 1e6:.2f} | "
              f"{st['mesh_mask_iou']:.3f} | {st['mesh_psnr']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
