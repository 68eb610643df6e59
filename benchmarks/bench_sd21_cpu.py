"""All five methods x both SD configs on the full-size SD 2.1-base at random init, on CPU.

    python benchmarks/bench_sd21_cpu.py [--model DIR] [--iters 2] [--size 64]

Builds the random-init SD 2.1-base from configs (scripts/build_random_sd21.py) unless --model
names one, loads it once through the production loader, then runs `generate` for sds, ism, cds,
gcs, sctd with configs/sd21.yaml and configs/sd21_perpneg.yaml (64 px, 1 view, ball init). Prints
one JSON line per run: s/iteration, UNet forwards and evaluations per iteration (checked against
docs/METHOD.md by tests/unet_calls.py), peak RSS of the process so far. Random weights time the
architecture, not the result.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

METHODS = ("sds", "ism", "cds", "gcs", "sctd")
CONFIGS = ("sd21.yaml", "sd21_perpneg.yaml")


class _Patcher:
    """The one method of pytest's MonkeyPatch that UNetCallRecorder.install uses."""

    def setattr(self, obj, name, value):  # noqa: ANN001
        setattr(obj, name, value)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="diffusers SD dir (default: build the random SD 2.1-base)")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()

    import torch

    from common.config import load_config
    from stages.generate import generate
    from stages.priors.registry import load_prior
    from unet_calls import UNetCallRecorder, check_iterations

    model = a.model
    if not model:
        from build_random_sd21 import build

        t0 = time.perf_counter()
        model = str(Path(tempfile.mkdtemp(prefix="sd21_random_")) / "stable-diffusion-2-1-base")
        build(Path(model), "fp16")
        print(f"# random-init SD 2.1-base built in {time.perf_counter() - t0:.1f} s, peak RSS "
              f"{_peak_rss_mb():.0f} MB", flush=True)
    sets = [f"prior.model={model}", f"prior.image_size={a.size}", "generate.batch_views=1",
            f"generate.iterations={a.iters}", "generate.save_ply_at=[]", "init.method=ball",
            "init.ball_num_gaussians=4096", "prior.allow_cpu=true"]
    t0 = time.perf_counter()
    prior = load_prior(load_config("sd21.yaml", sets).prior, "cpu")
    print(f"# prior loaded in {time.perf_counter() - t0:.1f} s; {a.size} px, 1 view, {a.iters} iterations, "
          f"threads {torch.get_num_threads()}", flush=True)
    rec = UNetCallRecorder()
    rec.install(_Patcher())
    failures = 0
    for config in CONFIGS:
        for method in METHODS:
            cfg = load_config(config, sets + [f"generate.method={method}"])
            rec.calls.clear()
            with tempfile.TemporaryDirectory() as d:
                res = generate(cfg, "a hamburger", 0, d, progress=False, prior=prior)
            b = cfg.generate.baselines
            try:
                its = check_iterations(rec.calls, method, views=1, perp_neg=cfg.prior.perp_neg,
                                       t_tau=cfg.generate.sctd.t_tau, ism_delta_t=b.ism_delta_t,
                                       ism_delta_s=b.ism_delta_s,
                                       consistency_approx=cfg.generate.sctd.consistency_approx)
                spec = "ok" if len(its) == res.iterations else f"{len(its)} iterations parsed"
            except AssertionError as e:
                its, spec = [], f"MISMATCH: {e}"
            failures += spec != "ok" or not res.ok
            print(json.dumps({
                "config": config, "method": method, "ok": res.ok, "s_per_it": round(res.wall_s / max(1, res.iterations), 2),
                "unet_forwards_per_it": [it.calls for it in its], "unet_evaluations_per_it": [it.evaluations for it in its],
                "t": [it.t for it in its], "spec": spec, "peak_rss_mb": round(_peak_rss_mb())}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
