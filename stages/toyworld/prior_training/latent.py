"""Train the latent toy Stable Diffusion (the shipped toy SD): a small AutoencoderKL (32x32 rgb -> 4x8x8) + a latent UNet.

Why latent: SD 2.1 works in a VAE's latent space; this prior does the same at toy size (inexact
DDIM inversion, encoder in the gradient path), and it answers the catalogue's prompts far better
than the pixel toy SD of the same training budget (5000 steps: 91.7% of samples nearest their own
object vs 70% for the 3000-step pixel model; benchmarks/RESULTS.md). `sctd3d toy train-prior`
runs this recipe by default (`--recipe pixel` trains the pixel model, shipped as `toy_pixel`).

Recipe, SD's in miniature: the VAE is trained on the toy views with an L2 reconstruction loss and a
small KL weight; its `scaling_factor` is 1 / std of the latents of all training views (SD's rule,
which gave SD 1.x its 0.18215); then `common.fit_unet` trains tokenizer + text encoder + UNet
on the scaled latents (posterior means). The output is a standard diffusers directory WITH vae/,
loaded by `StableDiffusionPrior.from_pretrained` exactly like SD 2.1 (encode = VAE sample x
scaling_factor, differentiable; decode = VAE decode of z / scaling_factor). UNet and VAE are trained
in fp32 and stored in fp16 (loaded as fp32; 11 MB instead of 19 MB). Same views, seeds, step counts
and thread count -> same weights on the same machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stages.toyworld.catalogue import load_catalogue
from stages.toyworld.prior_training.common import (FORCE_HELP, OUT_HELP, TrainParams, fit_unet, resolve_out_dir,
                                                   save_dtype, training_views)

log = logging.getLogger(__name__)

LATENT_STEPS = 5000  # the shipped toy SD: 91.7% of samples nearest their own object (2500 steps: 89%)


@dataclass
class VaeParams:
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 30
    kl_weight: float = 1e-4  # per latent element, next to the per-pixel MSE: small, as in SD
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # 3 levels = two downsamplings: 32 -> 8
    latent_channels: int = 4
    norm_num_groups: int = 8
    seed: int = 0
    save_dtype: str = "fp16"  # storage dtype (trained and loaded in fp32)


def latent_unet_params() -> TrainParams:
    """The latent UNet's defaults: the pixel recipe, wider channels on the 8x8 latent grid."""
    return TrainParams(steps=LATENT_STEPS, block_out_channels=(32, 64, 128), attn_levels=2, save_dtype="fp16")


def default_out_dir() -> Path:
    """The shipped toy SD directory: what `sctd3d toy train-prior` writes is what the package ships."""
    from stages.toyworld import TOY_SD_DIR

    return TOY_SD_DIR


def build_vae(vp: VaeParams, resolution: int):
    from diffusers import AutoencoderKL

    n = len(vp.block_out_channels)
    if n < 1 or any(c % vp.norm_num_groups for c in vp.block_out_channels):
        raise ValueError(f"VAE block_out_channels={vp.block_out_channels}: need >= 1 level, each a multiple of "
                         f"norm_num_groups={vp.norm_num_groups}")
    if resolution % 2 ** (n - 1):
        raise ValueError(f"resolution={resolution} must be divisible by the VAE factor {2 ** (n - 1)} "
                         f"({n} levels); change --resolution or the VAE levels")
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(vp.block_out_channels),
                         layers_per_block=1, latent_channels=vp.latent_channels, norm_num_groups=vp.norm_num_groups,
                         sample_size=resolution)


def train_vae(images: torch.Tensor, vp: VaeParams, log_every: int = 50):
    """Fit an AutoencoderKL to `images` (N, 3, H, W) in [-1, 1]; returns (vae in eval mode, info)."""
    if vp.steps < 1:
        raise ValueError(f"train_vae: steps={vp.steps} must be >= 1")
    torch.manual_seed(vp.seed)
    vae = build_vae(vp, images.shape[-1])
    opt = torch.optim.AdamW(vae.parameters(), lr=vp.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(vp.seed)
    t0 = time.perf_counter()
    rec_hist: list[float] = []
    vae.train()
    for step in range(vp.steps):
        x = images[torch.randint(0, len(images), (vp.batch_size,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        rec_loss = F.mse_loss(rec, x)
        kl = post.kl().mean() / post.mean[0].numel()
        loss = rec_loss + vp.kl_weight * kl
        for grp in opt.param_groups:
            grp["lr"] = vp.lr * min(1.0, (step + 1) / max(1, vp.warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        rec_hist.append(float(rec_loss.detach()))
        if (step + 1) % log_every == 0 or step == vp.steps - 1:
            log.info("VAE step %d/%d rec %.5f (avg50 %.5f) kl/elem %.3f %.2f s/step", step + 1, vp.steps,
                     rec_hist[-1], sum(rec_hist[-50:]) / len(rec_hist[-50:]), float(kl.detach()),
                     (time.perf_counter() - t0) / (step + 1))
    vae.eval()
    return vae, {"vae_steps": vp.steps, "vae_seconds": round(time.perf_counter() - t0, 1),
                 "vae_rec_mse_avg100": sum(rec_hist[-100:]) / len(rec_hist[-100:])}


@torch.no_grad()
def encode_means(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(posterior means, posterior stds) of `images` (unscaled latents)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        d = vae.encode(images[i:i + batch]).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor, latents: torch.Tensor, batch: int = 256) -> float:
    """PSNR (dB, images in [0, 1]) of decode(posterior mean) against the images: the VAE's ceiling."""
    se = 0.0
    for i in range(0, len(images), batch):
        rec = vae.decode(latents[i:i + batch]).sample.clamp(-1, 1)
        se += float(((rec - images[i:i + batch]) / 2).double().pow(2).sum())
    return 10.0 * math.log10(1.0 / (se / images.numel()))


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """SD's rule: 1 / std of the training latents, so the diffusion model sees unit-variance data."""
    std = float(latents.double().std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"latent std {std} is not positive and finite; the VAE did not train (check its steps)")
    return 1.0 / std


def vae_saver(vae, dtype_name: str = "fp32"):
    """`save_extra` for fit_unet: writes vae/ (stored in `dtype_name`) and lists AutoencoderKL in
    model_index.json."""
    import copy

    stored = copy.deepcopy(vae).to(save_dtype(dtype_name))

    def save(out: Path) -> None:
        stored.save_pretrained(str(out / "vae"), safe_serialization=True)
        index_path = out / "model_index.json"
        index = json.loads(index_path.read_text())
        index["vae"] = ["diffusers", "AutoencoderKL"]
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    return save


def train(out_dir: str | Path | None = None, steps: int = LATENT_STEPS, vae_steps: int = 800, seed: int = 0,
          params: TrainParams | None = None, vae_params: VaeParams | None = None, catalogue: str | None = None,
          cache_dir: str | None = None, log_every: int = 10) -> dict:
    """Train VAE then latent UNet; save to `out_dir` (default `default_out_dir()`); returns the info dict."""
    p = params or latent_unet_params()
    vp = vae_params or VaeParams()
    p.steps, p.seed, vp.steps, vp.seed = int(steps), int(seed), int(vae_steps), int(seed)
    if min(p.steps, vp.steps) < 1:
        raise ValueError(f"train: steps={steps} and vae_steps={vae_steps} must both be >= 1")
    save_dtype(p.save_dtype), save_dtype(vp.save_dtype)  # bad names fail before any training
    out = Path(out_dir) if out_dir else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    cat = load_catalogue(catalogue)
    images, az, labels = training_views(cat, p, cache_dir)
    vae, vae_info = train_vae(images, vp, log_every=max(log_every, 50))
    means, stds = encode_means(vae, images)
    sf = latent_scaling_factor(means)
    vae.register_to_config(scaling_factor=sf)
    vae_info.update({"scaling_factor": sf, "vae_rec_psnr_db": round(reconstruction_psnr(vae, images, means), 2),
                     "latent_mean": float(means.mean()), "latent_std": float(means.std()),
                     "posterior_std_mean": float(stds.mean()), "latent_shape": list(means.shape[1:]),
                     "vae_params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(vp).items()}})
    log.info("VAE: latents %s, std %.4f -> scaling_factor %.4f, reconstruction %.2f dB, posterior std %.4f",
             tuple(means.shape[1:]), vae_info["latent_std"], sf, vae_info["vae_rec_psnr_db"],
             vae_info["posterior_std_mean"])
    return fit_unet(out, means * sf, az, labels, cat.prompts(), p,
                    extra_info={"catalogue": cat.source if catalogue else "shipped", "objects": len(cat.objects),
                                "latent": True, **vae_info},
                    log_every=log_every, save_extra=vae_saver(vae, vp.save_dtype))


def main(argv: list[str] | None = None) -> int:
    """`sctd3d toy train-prior [--recipe latent] [--out DIR] [--steps N] [--vae-steps N] [--seed S]`."""
    ap = argparse.ArgumentParser(prog="sctd3d toy train-prior [--recipe latent]", description=__doc__.splitlines()[0],
                                 epilog="--recipe pixel trains the pixel-space toy SD instead (shipped as prior.model=toy_pixel; "
                                        "`sctd3d toy train-prior --recipe pixel --help`).")
    ap.add_argument("--out", default=None, help=OUT_HELP)
    ap.add_argument("--force-package", action="store_true", help=FORCE_HELP)
    ap.add_argument("--steps", type=int, default=LATENT_STEPS, help=f"latent UNet training steps (default {LATENT_STEPS}, the shipped weights)")
    ap.add_argument("--vae-steps", type=int, default=VaeParams.steps, help=f"VAE training steps (default {VaeParams.steps})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=TrainParams.batch_size)
    ap.add_argument("--num-views", type=int, default=TrainParams.num_views)
    ap.add_argument("--catalogue", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (the shipped weights were trained with 1; other counts may differ in the last bits)")
    a = ap.parse_args(argv)
    out = resolve_out_dir(a.out, "latent", a.force_package)
    if isinstance(out, str):
        ap.error(out)
    a.out = str(out)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = latent_unet_params()
    p.batch_size, p.num_views = a.batch_size, a.num_views
    torch.set_num_threads(a.threads)
    info = train(a.out, a.steps, a.vae_steps, a.seed, p, None, a.catalogue, a.cache_dir)
    print(json.dumps({k: info[k] for k in ("steps", "final_loss_avg100", "train_seconds", "scaling_factor",
                                           "vae_rec_psnr_db")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
