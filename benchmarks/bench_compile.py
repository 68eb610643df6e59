"""UNet forward time per `prior.compile` mode (issue 20 item 8): none (eager), default, reduce-overhead.

Loads the SD in --model (e.g. the random-init SD 2.1-base of scripts/build_random_sd21.py) with the
production loader once per mode and times `prior.eps` at the generate loop's two call shapes: the
unconditional (inversion) call on B latents and the guided call on 2B (CFG: cond + negative).
Per mode, one JSON line: seconds of the first calls (torch.compile's compile time), ms per call
after warm-up (CUDA-synchronised), and the largest |eps - eager eps| over both shapes.
With --iters N it also times N generate iterations per mode (bench_generate's timing, sd21.yaml).

  python benchmarks/bench_compile.py --model DIR                     # GPU: 512 px, 4 views, fp16
  python benchmarks/bench_compile.py --model DIR --device cpu --dtype fp32 --size 16 --views 1 \\
      --modes none,default --calls 2                                  # CPU smoke (slow compile)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from common.config import PriorConfig  # noqa: E402
from stages.priors.registry import load_prior  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_mode(a, mode: str, inputs, reference: dict | None) -> tuple[dict, dict]:
    cfg = PriorConfig(name="stable_diffusion", model=a.model, image_size=a.size, dtype=a.dtype, compile=mode,
                      allow_cpu=a.device == "cpu")
    prior = load_prior(cfg, a.device)
    emb = {k: prior.embed(p) for k, p in (("null", [""] * a.views), ("guided", ["a red cube", ""] * a.views))}
    rec = {"mode": mode, "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU",
           "size": a.size, "views": a.views, "dtype": str(prior.dtype)}
    outs = {}
    _sync(a.device)
    t0 = time.perf_counter()
    for k, (z, t) in inputs.items():
        outs[k] = prior.eps(z, t, emb[k]).float().cpu()
    _sync(a.device)
    rec["first_calls_s"] = round(time.perf_counter() - t0, 2)
    for k, (z, t) in inputs.items():
        for _ in range(a.warm):
            prior.eps(z, t, emb[k])
        _sync(a.device)
        t0 = time.perf_counter()
        for _ in range(a.calls):
            prior.eps(z, t, emb[k])
        _sync(a.device)
        rec[f"ms_per_{k}_call"] = round(1e3 * (time.perf_counter() - t0) / a.calls, 2)
    if reference is not None:
        rec["max_abs_diff_vs_eager"] = max(float((outs[k] - reference[k]).abs().max()) for k in outs)
        rec["max_abs_eps"] = max(float(reference[k].abs().max()) for k in outs)
    if a.iters > 0:
        from bench_generate import _run, sd21_overrides
        from common.config import load_config
        gcfg = load_config("sd21.yaml", sd21_overrides(a.model, a.device, a.size, a.views, a.gaussians)
                           + [f"prior.compile={mode}", "generate.method=sctd"])
        rec["generate"] = _run(gcfg, prior, f"sd21/sctd/{mode}", a.iters, warm=3, repeats=1)
    del prior
    if a.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rec, outs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a diffusers SD directory")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--size", type=int, default=512, help="render size (latents are size / 8)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--modes", default="none,default,reduce-overhead")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per shape")
    ap.add_argument("--warm", type=int, default=3, help="untimed calls per shape after the first")
    ap.add_argument("--iters", type=int, default=0, help="also time this many SCTD generate iterations")
    ap.add_argument("--gaussians", type=int, default=81920, help="with --iters: initial Gaussians")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_compile: no CUDA here (use --device cpu for a smoke run)")
        return 1
    torch.manual_seed(0)
    probe = load_prior(PriorConfig(name="stable_diffusion", model=a.model, image_size=a.size, dtype=a.dtype,
                                   allow_cpu=a.device == "cpu"), a.device)
    shape, dev = probe.latent_shape, probe.device
    del probe
    g = torch.Generator(device=dev).manual_seed(0)
    inputs = {"null": (torch.randn(a.views, *shape, generator=g, device=dev), torch.full((a.views,), 500, device=dev)),
              "guided": (torch.randn(2 * a.views, *shape, generator=g, device=dev),
                         torch.full((2 * a.views,), 700, device=dev))}
    reference = None
    for mode in a.modes.split(","):
        torch._dynamo.reset()                  # each mode compiles from scratch
        rec, outs = time_mode(a, mode, inputs, reference)
        if mode == "none":
            reference = outs
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
