"""`sctd3d evaluate` on N toy assets: the executor path (local, optionally Ray) vs the old serial
path (stages/evaluate.py as of commit 266dc6e, before evaluate went through the executor).

    .venv/bin/python benchmarks/bench_evaluate.py [--assets 1000] [--ray-workers 0] [--old-commit 266dc6e]

The run: N assets of the toy world (JSONL rows "a red cube" with seeds 0..N-1, each a 150-Gaussian
blob written by a stand-in generator), generated with the render and score stages off, so
`evaluate` renders and scores every asset: a 3-view orbit at 32 px, metrics.metrics=[toy_psnr], no
video, no FID. Each path re-scores its own copy of the same run; wall seconds include the lock,
manifest reads, commits, compaction and summary files. The old path is loaded from `git show`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common import manifest  # noqa: E402
from common.config import load_config  # noqa: E402

CFG = ["generate.iterations=3", "generate.save_ply_at=[]", "generate.checkpoint_every=0",
       "render.num_views=3", "render.resolution=32", "render.video=false",
       "metrics.metrics=[toy_psnr]", "metrics.fid=false", "pipeline.report=false"]


def make_run(out: Path, n: int) -> float:
    import fakes
    from export_fixtures import blob_scene
    from kernels.ply import save_ply
    from pipeline.run import run_batch

    def small(cfg, prompt, seed, asset_dir, progress=False):
        save_ply(str(Path(asset_dir) / "asset.ply"), blob_scene(seed % 16))
        (Path(asset_dir) / "meta.json").write_text(json.dumps({"prompt": prompt, "seed": seed}))
        return fakes.result(asset_dir)

    prompts = out.parent / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "a red cube", "seed": i}) + "\n"
                               for i in range(n)))
    t = time.perf_counter()
    with fakes.generating(small):
        s = run_batch(str(prompts), load_config("toy.yaml", CFG + ["pipeline.render=false",
                                                                   "pipeline.score=false"]),
                      str(out), progress=False)
    assert s.done == n, s.line()
    return time.perf_counter() - t


def old_module(commit: str):
    src = subprocess.run(["git", "show", f"{commit}:stages/evaluate.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="old-evaluate-")) / "old_evaluate.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_evaluate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=1000)
    ap.add_argument("--ray-workers", type=int, default=0, help="also time --executor ray with N workers")
    ap.add_argument("--old-commit", default="266dc6e")
    ap.add_argument("--work", default="")
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-evaluate-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "run"
    if not (base / "run.json").exists():
        print(f"making a run of {a.assets} assets ...", flush=True)
        print(f"  {make_run(base, a.assets):.1f} s")
    cfg = load_config("toy.yaml", CFG)
    from pipeline.evaluate import evaluate_run

    paths = [("old serial (stages/evaluate.py @ %s)" % a.old_commit,
              lambda root: old_module(a.old_commit).evaluate(str(root), cfg)),
             ("executor local", lambda root: evaluate_run(str(root), cfg, "local"))]
    if a.ray_workers:
        paths.append((f"executor ray ({a.ray_workers} CPU workers)",
                      lambda root: evaluate_run(str(root), cfg, "ray", num_workers=a.ray_workers,
                                                executor_options={"gpus_per_worker": 0.0})))
    rows = []
    for name, fn in paths:
        root = work / f"copy-{len(rows)}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(base, root)
        t = time.perf_counter()
        fn(root)
        wall = time.perf_counter() - t
        recs = manifest.read(str(root)).to_pylist()
        scored = sum(1 for r in recs if r["toy_psnr"] is not None)
        assert scored == a.assets, (name, scored)
        rows.append((name, wall))
        print(f"{name}: {wall:.1f} s ({a.assets / wall:.1f} assets/s)", flush=True)
    load = os.getloadavg()[0]
    print(f"\n{a.assets} toy assets, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load {load:.1f}")
    print("| path | wall s | assets/s |\n|---|---|---|")
    for name, wall in rows:
        print(f"| {name} | {wall:.1f} | {a.assets / wall:.1f} |")


if __name__ == "__main__":
    main()
