"""Component timings and host syncs per iteration (issue 21 items: component timings with achieved
TFLOP/s; host syncs per iteration as CUDA's sync debug mode reports them).

Components (one JSON line each; CUDA events on cuda, perf_counter on cpu; FLOPs counted once by
torch.utils.flop_counter.FlopCounterMode on the real call, never hard-coded):
  unet_forward      one UNet forward (prior.eps) at each --unet-batches (64x64 latents at 512 px, fp16)
  vae_encode_fwd_bwd  the VAE encoder forward + backward to the image (prior.encode) at --vae-batch x --size px
  gsplat_fwd_bwd    gsplat rasterisation forward + backward at each --gaussians, --views x --size px
                    (time only: FlopCounterMode does not see custom CUDA kernels; skipped on CPU)
With --syncs N: N iterations of the real generate loop (stages.generate, sd21.yaml at the paper's
settings, bench_generate's overrides) under torch.cuda.set_sync_debug_mode("warn"); counts the
synchronizing-operation warnings per iteration (split at the loop's per-iteration deadline.check)
and names the project lines they come from. On CPU sync debug mode is a no-op (no CUDA stream to
wait on): the loop still runs, the count is reported as "n/a".

  python benchmarks/bench_components.py --model DIR                      # GPU: the paper's sizes
  python benchmarks/bench_components.py --model DIR --syncs 10           # GPU: host syncs / iteration
  python benchmarks/bench_components.py --model DIR --device cpu --size 16 --unet-batches 1 \\
      --vae-batch 1 --reps 1 --warm 0 [--syncs 3 --gaussians 256 --views 1]   # CPU smoke (tiny SD)
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from common.config import PriorConfig  # noqa: E402
from stages.priors.registry import load_prior  # noqa: E402


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"


def timed_ms(fn, device: str, reps: int, warm: int) -> float:
    """Mean ms per call of fn: CUDA events on cuda (no host sync inside the timed window), else
    perf_counter."""
    for _ in range(warm):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return 1e3 * (time.perf_counter() - t0) / reps


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def record(component: str, a, ms: float, flops: int | None, **extra) -> dict:
    rec = {"component": component, "device": device_name(a.device), **extra, "ms": round(ms, 3),
           "flops": flops if flops is not None else "n/a",
           "tflops_achieved": float(f"{flops / (ms / 1e3) / 1e12:.4g}") if flops and ms > 0 else "n/a"}
    print(json.dumps(rec), flush=True)
    return rec


def load(a):
    cfg = PriorConfig(name="stable_diffusion", model=a.model, image_size=a.size, dtype=a.dtype,
                      allow_cpu=a.device == "cpu")
    return load_prior(cfg, a.device)


def bench_prior(a, prior) -> list[dict]:
    out = []
    shape = tuple(prior.latent_shape)       # (4, size / 8, size / 8) for SD
    g = torch.Generator(device=prior.device).manual_seed(0)
    for b in a.unet_batches:
        z = torch.randn(b, *shape, device=prior.device, generator=g)
        t = torch.full((b,), 500, device=prior.device, dtype=torch.long)
        emb = prior.embed(["a red cube"] * b)
        fn = lambda: prior.eps(z, t, emb)  # noqa: E731
        flops = count_flops(fn)
        out.append(record("unet_forward", a, timed_ms(fn, a.device, a.reps, a.warm), flops, batch=b,
                          latent=list(shape), dtype=str(prior.dtype)))
    if prior.vae is None:
        print(f"# vae_encode_fwd_bwd skipped: {a.model} has no VAE (pixel-space model)", flush=True)
        return out
    x = torch.rand(a.vae_batch, 3, a.size, a.size, device=prior.device, generator=g, requires_grad=True)

    def vae_step():
        prior.encode(x).sum().backward()
        x.grad = None

    flops = count_flops(vae_step)
    out.append(record("vae_encode_fwd_bwd", a, timed_ms(vae_step, a.device, a.reps, a.warm), flops,
                      batch=a.vae_batch, size=a.size, dtype=str(prior.dtype)))
    return out


def bench_gsplat(a) -> list[dict]:
    from kernels.render import gsplat_available, render

    if not a.device.startswith("cuda"):
        print("# gsplat_fwd_bwd skipped: gsplat's rasteriser needs CUDA (device is cpu)", flush=True)
        return []
    if not gsplat_available():
        print("# gsplat_fwd_bwd skipped: gsplat's CUDA extension is not available", flush=True)
        return []
    from common.config import load_config
    from kernels.cameras import orbit_cameras
    from stages.init import gaussians_from_points, sample_ball

    out = []
    cfg = load_config("sd21.yaml", ["init.method=ball"])
    cams = orbit_cameras(a.views, elevation_deg=15.0, radius=3.5, fovy=0.6, width=a.size, height=a.size).to(a.device)
    for n in a.gaussians:
        gen = torch.Generator().manual_seed(0)
        gs = gaussians_from_points(sample_ball(n, 1.0, gen), cfg.init, gen).to(a.device).requires_grad_()

        def step():
            r = render(gs, cams, backend="gsplat")
            (r.rgb.sum() + r.alpha.sum()).backward()

        out.append(record("gsplat_fwd_bwd", a, timed_ms(step, a.device, a.reps, a.warm), None, gaussians=n,
                          views=a.views, size=a.size))
    return out


def bench_syncs(a) -> dict:
    """Host syncs per iteration of the real generate loop, as CUDA's sync debug mode reports them."""
    from bench_generate import sd21_overrides

    from common import deadline
    from common.config import load_config
    from stages import generate as G

    n = a.syncs
    gauss = a.gaussians[0]
    cfg = load_config("sd21.yaml", sd21_overrides(a.model, a.device, a.size, a.views, gauss) +
                      [f"generate.iterations={n}", "generate.checkpoint_every=0", "generate.save_ply_at=[]",
                       "generate.log_every=100000", "generate.method=sctd", "render.video=false"])
    prior = load_prior(cfg.prior, a.device, toy=cfg.toy)
    cuda = a.device.startswith("cuda")
    per_it: list[int] = [0]               # warnings before the first deadline.check, then per iteration
    sites: list[collections.Counter] = [collections.Counter()]
    root = str(ROOT)

    show = warnings.showwarning

    def on_warning(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return show(message, category, filename, lineno, file, line)
        per_it[-1] += 1
        where = [f"{Path(f.filename).relative_to(root)}:{f.lineno}" for f in traceback.extract_stack()
                 if f.filename.startswith(root + "/")
                 and "/benchmarks/" not in f.filename and "-packages/" not in f.filename]
        sites[-1][where[-1] if where else f"{filename}:{lineno}"] += 1

    real_check = deadline.check

    def check(where: str) -> None:
        per_it.append(0)
        sites.append(collections.Counter())
        real_check(where)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = on_warning
        deadline.check = check
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            res = G.generate(cfg, "a red cube", 0, tempfile.mkdtemp(prefix="bench_syncs_"), progress=False, prior=prior)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
            deadline.check = real_check
    # per_it[i] for i >= 1: syncs after the i-th check (iteration i's body up to the next check);
    # the last segment also holds the end of the run (final writes): left out of the median
    loop = per_it[1:-1] if len(per_it) > 2 else per_it[1:]
    rec = {"component": "host_syncs_per_iteration", "device": device_name(a.device), "method": "sctd",
           "iterations": n, "size": a.size, "views": a.views, "gaussians": gauss, "wall_s": round(res.wall_s, 2)}
    if cuda:
        rec.update({"median": statistics.median(loop) if loop else "n/a", "per_iteration": loop,
                    "before_loop": per_it[0], "after_last_check": per_it[-1],
                    "sites_median_iteration": dict(sites[len(sites) // 2].most_common(10))})
    else:
        rec.update({"median": "n/a", "reason": "CPU: torch.cuda.set_sync_debug_mode only reports CUDA syncs "
                                               "(a no-op here); the loop ran %d iterations" % (len(per_it) - 1)})
    print(json.dumps(rec), flush=True)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a diffusers SD directory (scripts/build_random_sd21.py)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--size", type=int, default=512, help="render size in px (UNet latents are size / 8)")
    ap.add_argument("--unet-batches", default="4,8", help="UNet forward batch sizes")
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--gaussians", default="81920,327680", help="gsplat Gaussian counts (the first: --syncs)")
    ap.add_argument("--views", type=int, default=4, help="gsplat views (and --syncs' views per iteration)")
    ap.add_argument("--reps", type=int, default=10, help="timed calls per measurement")
    ap.add_argument("--warm", type=int, default=3, help="untimed calls before timing")
    ap.add_argument("--syncs", type=int, default=0, help="count host syncs over N generate iterations (only that)")
    a = ap.parse_args()
    a.unet_batches = [int(x) for x in a.unet_batches.split(",")]
    a.gaussians = [int(x) for x in a.gaussians.split(",")]
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_components: --device cuda but torch.cuda is not available; use --device cpu", file=sys.stderr)
        return 2
    if a.syncs > 0:
        bench_syncs(a)
        return 0
    prior = load(a)
    bench_prior(a, prior)
    del prior
    if a.device == "cuda":
        torch.cuda.empty_cache()
    bench_gsplat(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
