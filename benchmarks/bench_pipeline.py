"""Pipeline overhead and scaling (issue 5). Prints numbers; append them to benchmarks/RESULTS.md.

1. Per-asset overhead (scheduling, validation, artifact I/O, manifest commit) with a trivially
   short generation (writes a tiny .ply, no compute): local executor and Ray executor.
2. Throughput with 1 vs 2 Ray workers on a CPU-bound generation of fixed work (a busy loop of
   ~`--work-s` seconds), scaling = (assets/s with 2) / (assets/s with 1); ideal 2.0.

Usage: .venv/bin/python benchmarks/bench_pipeline.py [--n 16] [--work-s 1.0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def trivial_generate(cfg, prompt, seed, asset_dir, progress=False):
    """Trivially short generation: a tiny artifact, no compute."""
    d = Path(asset_dir)
    (d / "asset.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nend_header\n")
    (d / "meta.json").write_text(json.dumps({"prompt": prompt, "seed": seed}))
    from stages.generate import GenerateResult

    return GenerateResult(ok=True, asset_dir=str(d), asset_ply=str(d / "asset.ply"),
                          meta_path=str(d / "meta.json"), iterations=0, wall_s=0.0, unet_calls=0,
                          num_gaussians=0, meta={"device": "cpu"})


class BusyGenerate:
    """Fixed CPU work per asset (calibrated busy loop), so workers compete for real cores."""

    def __init__(self, loops: int):
        self.loops = loops

    def __call__(self, cfg, prompt, seed, asset_dir, progress=False):
        x = 0
        for i in range(self.loops):
            x += i * i % 7
        return trivial_generate(cfg, prompt, seed, asset_dir)


def calibrate(work_s: float) -> int:
    n = 200_000
    t = time.perf_counter()
    BusyGenerate(n)(None, "", 0, tempfile.mkdtemp())
    dt = time.perf_counter() - t
    return int(n * work_s / dt)


def install_generate(gen) -> None:
    """Make `gen` the run's generator: the generation seam pipeline.workers.GENERATOR, which a run
    hands to every worker (in-process or Ray) as it starts."""
    import pipeline.workers

    pipeline.workers.GENERATOR = gen


def run(prompts: str, cfg, executor: str, workers: int, gen) -> float:
    from pipeline.run import run_batch

    install_generate(gen)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        s = run_batch(prompts, cfg, out, executor=executor, num_workers=workers, progress=False)
        wall = time.perf_counter() - t
        assert s.done == s.total, s.line()
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="assets per run")
    ap.add_argument("--work-s", type=float, default=1.0, help="CPU seconds per asset (scaling)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    from common.config import load_config

    cfg = load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                   "pipeline.report=false", "metrics.fid=false"])
    tmp = tempfile.mkdtemp()
    prompts = os.path.join(tmp, "prompts.txt")
    Path(prompts).write_text("\n".join(f"prompt number {i}" for i in range(args.n)) + "\n")
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, n={args.n}")

    prompts2 = os.path.join(tmp, "prompts2.txt")
    Path(prompts2).write_text("\n".join(f"prompt number {i}" for i in range(2 * args.n)) + "\n")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes share these cores)")

    run(prompts, cfg, "local", 1, trivial_generate)  # warm imports
    w = run(prompts, cfg, "local", 1, trivial_generate)
    w2n = run(prompts2, cfg, "local", 1, trivial_generate)
    print(f"local executor, trivial generation: {w:.2f} s for {args.n}, {w2n:.2f} s for {2 * args.n}: "
          f"marginal {1000 * (w2n - w) / args.n:.1f} ms/asset, fixed {w - (w2n - w):.2f} s/run")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        run(prompts, cfg, "ray", 2, trivial_generate)  # warm workers' imports
        w = run(prompts, cfg, "ray", 2, trivial_generate)
        w2n = run(prompts2, cfg, "ray", 2, trivial_generate)
        print(f"ray executor (2 actors), trivial generation: {w:.2f} s for {args.n}, {w2n:.2f} s for "
              f"{2 * args.n}: marginal {1000 * (w2n - w) / args.n:.1f} ms/asset (wall, 2 in "
              f"parallel), fixed {w - (w2n - w):.2f} s/run (actor start-up)")
        loops = calibrate(args.work_s)
        gen = BusyGenerate(loops)
        w1 = run(prompts, cfg, "ray", 1, gen)
        w2 = run(prompts, cfg, "ray", 2, gen)
        ideal1 = args.n * args.work_s
        print(f"ray, {args.work_s:.1f} s CPU work/asset: 1 worker {w1:.2f} s "
              f"({args.n / w1:.3f} assets/s; overhead vs ideal {100 * (w1 - ideal1) / ideal1:.1f}%), "
              f"2 workers {w2:.2f} s ({args.n / w2:.3f} assets/s); scaling {w1 / w2:.2f}x "
              f"({w1 / w2 / 2:.2f} of ideal)")
    finally:
        ray.shutdown()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
