"""Timings of init (ball / toy_shape / Point-E expansion at the spec's 81,920) and of the prior
wrapper on the tiny random SD of the tests (wrapper overhead, batched vs separate calls).

Run: .venv/bin/python benchmarks/bench_priors_init.py   (prints a Markdown table)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common.config import InitConfig, PriorConfig  # noqa: E402
from stages.init import expand_points, gaussians_from_points, init_gaussians, knn_mean_sq_dist  # noqa: E402
from stages.init import knn_mean_sq_dist_reference  # noqa: E402


def timed(fn, reps: int = 3) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    g = torch.Generator()
    cfg = InitConfig(method="ball")
    rows.append(("init ball, 81,920 Gaussians (KD-tree scales)", timed(lambda: init_gaussians(cfg, "x", g.manual_seed(0)))))
    from stages.toyworld.catalogue import load_catalogue
    prompt = load_catalogue().prompts()[0]
    tcfg = InitConfig(method="toy_shape")
    rows.append((f"init toy_shape '{prompt}', 81,920", timed(lambda: init_gaussians(tcfg, prompt, g.manual_seed(0)))))
    fake = torch.rand(4096, 3) - 0.5
    rows.append(("Point-E expansion 4096 x 20 + Gaussians (fake points)",
                 timed(lambda: gaussians_from_points(expand_points(fake, 20, 0.05, g.manual_seed(0)), cfg, g))))
    pts = torch.rand(4096, 3)
    rows.append(("kNN scales 4096 pts: KD-tree", timed(lambda: knn_mean_sq_dist(pts))))
    rows.append(("kNN scales 4096 pts: torch reference (cdist)", timed(lambda: knn_mean_sq_dist_reference(pts))))

    from conftest import build_tiny_sd
    from stages.priors.guidance import make_guided_eps
    from stages.priors.registry import load_prior
    d = build_tiny_sd(Path(tempfile.mkdtemp()) / "tiny_sd")
    t0 = time.perf_counter()
    prior = load_prior(PriorConfig(model=str(d), image_size=64), "cpu")
    rows.append(("load tiny SD through the production loader", time.perf_counter() - t0))
    z = torch.randn(4, *prior.latent_shape)
    ge = make_guided_eps(prior, "a red cube", [0, 90, 180, -90], "blurry", 7.5)
    rows.append(("tiny SD guided CFG, 4 views (one call of 8)", timed(lambda: ge.guided(z, 500), 10)))
    embs = ge.emb
    t = torch.full((4,), 500)
    rows.append(("tiny SD cond + neg as two calls of 4",
                 timed(lambda: [prior.eps(z, t, embs[:4]), prior.eps(z, t, embs[4:])], 10)))
    rgb = torch.rand(4, 3, 64, 64, requires_grad=True)
    rows.append(("tiny SD encode + backward, 4 x 64x64", timed(lambda: prior.encode(rgb).sum().backward(), 5)))
    print("| step | seconds |\n|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.4f} |")


if __name__ == "__main__":
    main()
