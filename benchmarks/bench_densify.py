"""Gaussian counts through densification on the toy world (issue 20 item 6: the statistic).

Runs the toy world's default generation (toy.yaml: 600 iterations, 4 views, densification every
100 iterations from 100 to 450, 2,000-Gaussian ball) for a few prompts and prints the Gaussian
count after each densification event and at the end, and how the statistic compares with the
threshold just before the first densification. Run it on two checkouts to compare a change
of the densification rule. Usage: python benchmarks/bench_densify.py [--method sds] [--iters 600]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import load_config  # noqa: E402
from stages.optimisation import Optimisation  # noqa: E402
from stages.priors.registry import load_prior  # noqa: E402

PROMPTS = ("a red cube", "a green sphere")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="sds")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", default="|".join(PROMPTS), help="'|'-separated prompts")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("toy.yaml", [f"generate.method={a.method}", f"generate.iterations={a.iters}"])
    d = cfg.generate.densify
    events = [it for it in range(d.start, min(d.end, a.iters) + 1, d.every)]
    prior = load_prior(cfg.prior, cfg.prior.device, toy=cfg.toy)
    print(f"| prompt | {' | '.join(f'after it {e}' for e in events)} | end ({a.iters}) | s |")
    print("|---|" + "--:|" * (len(events) + 2))
    for prompt in a.prompts.split("|"):
        t0 = time.perf_counter()
        opt = Optimisation(cfg, prompt, a.seed, prior)
        opt.restore(opt.fresh_state())
        counts = []
        for it in range(1, a.iters + 1):
            if it == events[0]:                   # the statistic the first densification will see
                t = opt.trainer
                st = torch.nan_to_num(t.grad_accum / t.denom, nan=0.0)[t.denom > 0]
                q = torch.quantile(st, torch.tensor([0.05, 0.5])) / d.grad_threshold
                stat = (f"statistic / threshold at it {it - 1}: 5th pct {q[0]:.2f}, median {q[1]:.2f}, "
                        f"{float((st >= d.grad_threshold).float().mean()):.0%} above")
            opt.step(it)
            if it in events:
                counts.append(opt.gaussians.num())
        print(f"| {prompt} | {' | '.join(f'{n:,}' for n in counts)} | {opt.gaussians.num():,} "
              f"| {time.perf_counter() - t0:.0f} |  <!-- {stat} -->", flush=True)


if __name__ == "__main__":
    main()
