"""Toy SD acceptance numbers: how often a prompt's samples are nearest its own object, and speed.

Usage: .venv/bin/python benchmarks/bench_toy_sd.py [--per-prompt 8] [--steps 20] [--cfg 5.0]
Prints the per-prompt rate and sampling time; the training time and final loss come from
stages/toyworld/toy_sd/train_info.json (written by `sctd3d toy train-prior`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from common.config import PriorConfig
    from stages.priors.registry import load_prior
    from stages.priors.stable_diffusion import TOY_SD_DIR
    from stages.toyworld.catalogue import load_catalogue
    from stages.priors.sampling import sample
    from stages.toyworld.prior_training.common import nearest_object
    from stages.toyworld.views import ViewParams, catalogue_views

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--gt-views", type=int, default=256)
    ap.add_argument("--suffix", default=", front view")
    ap.add_argument("--model", default="", help="toy SD directory (default: the shipped one)")
    a = ap.parse_args()
    cat = load_catalogue()
    prior = load_prior(PriorConfig(name="toy_sd", model=a.model or "toy",
                                   image_size=32, device="cpu", dtype="fp32"))
    t0 = time.perf_counter()
    gt = catalogue_views(ViewParams(num_views=a.gt_views, resolution=32), cat)
    t_views = time.perf_counter() - t0
    prompts = [o.prompt + a.suffix for o in cat.objects for _ in range(a.per_prompt)]
    t0 = time.perf_counter()
    imgs = sample(prior, prompts, steps=a.steps, guidance_scale=a.cfg,
                         generator=torch.Generator().manual_seed(0))
    t_sample = time.perf_counter() - t0
    pred = nearest_object(imgs, gt).reshape(len(cat.objects), a.per_prompt)
    own = (pred == torch.arange(len(cat.objects))[:, None]).float()
    for o, r, row in zip(cat.objects, own.mean(1), pred):
        print(f"{o.name:22s} own {r:.2f}  nearest: {[cat.objects[int(i)].name for i in row]}")
    print(f"samples nearest own object: {own.mean():.3f}; prompts with >= 75% own: "
          f"{(own.mean(1) >= 0.75).float().mean():.3f} ({len(cat.objects)} prompts x {a.per_prompt})")
    print(f"ground-truth views ({a.gt_views}/object, cached or rendered): {t_views:.1f} s; sampling "
          f"{len(prompts)} images x {a.steps} DDIM steps (CFG {a.cfg}): {t_sample:.1f} s")
    info = json.loads(((Path(a.model) if a.model else TOY_SD_DIR) / "train_info.json").read_text())
    print(f"training: {info['steps']} steps, {info['train_seconds']} s, final loss (avg of last 100) "
          f"{info['final_loss_avg100']:.4f}")
    try:
        from PIL import Image
        grid = imgs.reshape(len(cat.objects), a.per_prompt, 3, 32, 32).permute(0, 3, 1, 4, 2)
        grid = grid.reshape(len(cat.objects) * 32, a.per_prompt * 32, 3)
        Image.fromarray((grid.numpy() * 255).round().astype("uint8")).save("/tmp/toy_sd_samples.png")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
