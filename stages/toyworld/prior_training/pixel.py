"""Train the pixel toy Stable Diffusion (shipped as `toy_pixel`): a tiny pixel-space UNet + CLIP text encoder.

Why a trained prior next to the exact one: SCTD needs a smooth prior whose conditional and
unconditional trajectories differ (the exact prior's classifier is saturated). The result is a
standard diffusers directory (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/,
no vae/ = pixel space, z = 2 rgb - 1) that `stages.priors.stable_diffusion` loads through the same
`from_pretrained` code as SD 2.1. Training is reproducible: same catalogue, views, seed and
step count -> same weights on the same machine.

Recipe: epsilon prediction, SD's scaled-linear betas (0.00085 -> 0.012, T = 1000), prompts with
view suffixes (", front view" / ", side view" / ", back view" by azimuth), bare prompts 10% of
the time and the empty prompt 10% (so null and classifier-free guidance work), AdamW with warm-up then a
constant rate, EMA weights saved every `checkpoint_every` steps: the checkpoint at step k is
bit-identical to the result of a k-step run (same random draws, no schedule depending on the
total), so a long run can be stopped at any checkpoint without losing reproducibility.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from stages.toyworld.catalogue import load_catalogue
from stages.toyworld.prior_training.common import (FORCE_HELP, OUT_HELP, TrainParams, fit_unet, resolve_out_dir,
                                                   training_views)

log = logging.getLogger(__name__)


def train(out_dir: str | Path, steps: int = 3000, seed: int = 0, params: TrainParams | None = None,
          catalogue: str | None = None, cache_dir: str | None = None, log_every: int = 10) -> dict:
    """Train and save the toy SD to `out_dir`; returns {steps, final_loss, seconds, params}."""
    p = params or TrainParams()
    p.steps, p.seed = int(steps), int(seed)
    if p.steps < 1:
        raise ValueError(f"train: steps={steps} must be >= 1")
    if p.threads:
        torch.set_num_threads(p.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cat = load_catalogue(catalogue)
    images, az, labels = training_views(cat, p, cache_dir)
    info = fit_unet(out, images, az, labels, cat.prompts(), p, extra_info={
        "catalogue": cat.source if catalogue else "shipped", "objects": len(cat.objects)}, log_every=log_every)
    return info


def main(argv: list[str] | None = None) -> int:
    """`sctd3d toy train-prior --recipe pixel [--out DIR] [--steps N] ...`."""
    ap = argparse.ArgumentParser(prog="sctd3d toy train-prior --recipe pixel", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help=OUT_HELP)
    ap.add_argument("--force-package", action="store_true", help=FORCE_HELP)
    ap.add_argument("--steps", type=int, default=TrainParams.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=TrainParams.batch_size)
    ap.add_argument("--num-views", type=int, default=TrainParams.num_views)
    ap.add_argument("--resolution", type=int, default=TrainParams.resolution)
    ap.add_argument("--catalogue", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    a = ap.parse_args(argv)
    out = resolve_out_dir(a.out, "pixel", a.force_package)
    if isinstance(out, str):
        ap.error(out)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = TrainParams(batch_size=a.batch_size, num_views=a.num_views, resolution=a.resolution, threads=a.threads)
    info = train(str(out), a.steps, a.seed, p, a.catalogue, a.cache_dir)
    print(json.dumps({k: info[k] for k in ("steps", "final_loss_avg100", "train_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
