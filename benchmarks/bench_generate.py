"""Seconds and UNet calls per generate iteration.

  python benchmarks/bench_generate.py toy  [--iters 20]   # toy prior (toy.yaml) on CPU, every method
  python benchmarks/bench_generate.py sd21 [--iters 20]   # CUDA: SD 2.1-base architecture, random
                                                          # weights, 512x512, 4 views, fp16
Prints one line per configuration; the sd21 mode also prints peak memory and the projected
minutes for a 5000-iteration asset. Random weights time the architecture, not the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from stages.generate import generate  # noqa: E402


def _run(cfg, prior, label: str, iters: int, warm: int, repeats: int = 3) -> dict:
    """Time `iters` iterations after `warm` warm-up iterations (difference of the loops' wall times).

    Each length is run `repeats` times and the minimum kept: on a shared machine the minimum is
    the least disturbed reading (a single pair of runs gave negative differences under load)."""
    out = {}
    for n in (warm, warm + iters):
        c = replace(cfg, generate=replace(cfg.generate, iterations=n, checkpoint_every=0, save_ply_at=[]))
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as d:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                res = generate(c, "a red cube", 0, d, progress=False, prior=prior)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                dt_n = res.wall_s  # the optimisation loop only (not init, prior or file I/O)
                del t0
            if n not in out or dt_n < out[n][0]:
                out[n] = (dt_n, res)
    dt = out[warm + iters][0] - out[warm][0]
    r = out[warm + iters][1]
    rec = {"config": label, "s_per_it": dt / iters, "unet_calls_per_it": r.meta["unet_calls_per_iteration"],
           "gaussians": r.num_gaussians, "peak_memory_mb": round(r.meta["peak_memory_mb"], 1),
           "peak_memory_kind": r.meta["peak_memory_kind"]}
    return rec


def bench_toy(iters: int, model: str = "toy") -> None:
    from stages.priors.base import load_prior

    base = load_config("toy.yaml", [f"prior.model={model}"])
    try:
        prior = load_prior(base.prior, "cpu")
    except Exception as e:  # the toy SD is not trained/shipped in this checkout yet
        print(f"# toy prior {base.prior.name!r} unavailable ({type(e).__name__}: {e}); timing the same "
              f"architecture trained for 1 step instead (speed only, not quality)")
        from stages.priors.stable_diffusion import StableDiffusionPrior
        from stages.toyworld.train_prior import TrainParams, train

        d = Path(tempfile.mkdtemp()) / "toy_sd"
        train(d, steps=1, params=TrainParams(num_views=8))
        prior = StableDiffusionPrior.from_pretrained(str(d), "cpu", "fp32", base.prior.image_size, name="toy_sd_1step")
    print(f"# toy prior {prior.name} ({model}), {prior.image_size}px, batch {base.generate.batch_views}, "
          f"threads {torch.get_num_threads()}")
    _run(base, prior, "warm-up", 2, warm=1, repeats=1)  # first-call costs
    for method in ("sds", "ism", "cds", "gcs", "sctd"):
        cfg = load_config("toy.yaml", [f"prior.model={model}", f"generate.method={method}"])
        print(json.dumps(_run(cfg, prior, f"toy/{method}", iters, warm=2)))


def _tokenizer(folder: Path):
    """A byte-level CLIP BPE vocabulary without merges (no tokenizer files ship offline)."""
    from transformers import CLIPTokenizer

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    toks = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(toks)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def sd21_random_prior(device: str = "cuda"):
    """SD 2.1-base architecture (UNet 865M, OpenCLIP-H text encoder, KL VAE), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stages.priors.stable_diffusion import StableDiffusionPrior

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, sample_size=512, scaling_factor=0.18215)
    tok = _tokenizer(Path(tempfile.mkdtemp()) / "tok")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                        num_attention_heads=16, num_hidden_layers=23, max_position_embeddings=77,
                                        hidden_act="gelu", projection_dim=1024))
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0).float()
    return StableDiffusionPrior(unet, text, tok, vae, alphas, device=torch.device(device), dtype=torch.float16,
                                image_size=512, name="sd21_random")


def bench_sd21(iters: int, methods: list[str]) -> None:
    if not torch.cuda.is_available():
        print("sd21 benchmark needs CUDA; none here")
        return
    from kernels.render import gsplat_available

    t0 = time.perf_counter()
    prior = sd21_random_prior()
    print(f"# {torch.cuda.get_device_name()}: SD 2.1-base architecture (random weights) built in "
          f"{time.perf_counter() - t0:.1f} s; gsplat CUDA: {gsplat_available()}")
    for method in methods:
        cfg = load_config("sd21.yaml", [f"generate.method={method}", "init.method=ball",
                                         "init.ball_num_gaussians=81920", "init.ball_radius=1.0",
                                         "prior.device=cuda"])
        torch.cuda.reset_peak_memory_stats()
        rec = _run(cfg, prior, f"sd21/{method}", iters, warm=3)
        rec["projected_min_per_5000_it"] = rec["s_per_it"] * 5000 / 60
        print(json.dumps(rec))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("toy", "sd21"))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--methods", default="sctd,sds", help="sd21 mode: comma-separated methods")
    ap.add_argument("--toy-model", default="toy", help="toy mode: prior.model (toy = latent toy SD, toy_pixel)")
    a = ap.parse_args()
    if a.mode == "toy":
        bench_toy(a.iters, a.toy_model)
    else:
        bench_sd21(a.iters, a.methods.split(","))


if __name__ == "__main__":
    main()
