"""Does inexact (latent, VAE) inversion change SCTD's behaviour on the toy world? (issue 4)

On the pixel toy SD, DDIM inversion is nearly exact and SCTD reduces to classifier score
distillation (docs/SCTD_TOY.md section 3). This benchmark uses the shipped latent toy SD (or trains
one of `stages.toyworld.prior_training.latent` into `--model DIR`: AutoencoderKL 32x32 rgb -> 4x8x8, latent
UNet) and measures on it,
with the protocols of the pixel measurements (functions imported, not copied):

  1. the prior itself: VAE reconstruction PSNR, scaling_factor, and sample quality (8 samples per
     catalogue prompt + ", front view", 20 DDIM steps, CFG 5, nearest of 32 GT views per object:
     the protocol of tests/test_toy_sd.py);
  2. probe (sctd_investigation.run_probe): at ball / shape / ground-truth renders, the share of the
     cross term that is inversion error, cos(SCTD grad, e_w - eps_null), cosines with render - truth;
  3. end to end (toy_table.run_one, configs/ablations/toy_short.yaml: 150 its x 2 views, LRs x4,
     ball init, seeds 0-2): SDS vs SCTD (code form) on 4 objects: PSNR, yaw PSNR, IoU, R-precision;
  4. trajectory (sctd_investigation.run_trajectory): the same runs, seed 0, continued to 300
     iterations, PSNR / IoU every 50: does SCTD still rise and then drift?

  python experiments/sctd_latent.py                      # the shipped latent toy SD: 1-4 (one thread)
  python experiments/sctd_latent.py --model DIR --skip-e2e
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from argparse import ArgumentParser, Namespace, RawDescriptionHelpFormatter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from sctd_investigation import run_probe, run_trajectory  # noqa: E402
from toy_table import OBJECTS, init_row, make_config, run_one, summarise  # noqa: E402

from common.config import CONFIG_DIR  # noqa: E402

PROBE_COLS = ["cos_g", "cos_self", "cos_cross", "cos_self_cross", "cos_g_csd", "self_norm", "cross_norm",
              "inv_err_share", "cos_inverr_gt"]


def ensure_model(model: Path, unet_steps: int, vae_steps: int) -> dict:
    """The latent toy SD at `model`: reused when its train_info matches the step counts, else trained
    (never over the shipped toy SD: other step counts need `--model DIR`)."""
    from stages.priors.stable_diffusion import TOY_SD_DIR
    from stages.toyworld.prior_training.latent import train

    info_path = model / "train_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("latent") and info.get("steps") == unet_steps and info.get("vae_steps") == vae_steps:
            print(f"reusing latent toy SD at {model}")
            return info
    if model.resolve() == TOY_SD_DIR.resolve():
        raise SystemExit(f"--unet-steps {unet_steps} / --vae-steps {vae_steps} differ from the shipped toy SD at {model}; "
                         f"pass --model DIR to train a separate one (the shipped weights are not overwritten)")
    print(f"training latent toy SD -> {model} (VAE {vae_steps} steps, UNet {unet_steps} steps)", flush=True)
    return train(model, steps=unet_steps, vae_steps=vae_steps, seed=0)


def sample_quality(model: Path) -> dict:
    """Fraction of 8 samples per prompt nearest their own object (tests/test_toy_sd.py protocol)."""
    from stages.priors.stable_diffusion import StableDiffusionPrior
    from stages.toyworld.catalogue import load_catalogue
    from stages.priors.sampling import sample
    from stages.toyworld.prior_training.common import nearest_object
    from stages.toyworld.views import ViewParams, catalogue_views

    prior = StableDiffusionPrior.from_pretrained(str(model), "cpu", "fp32", image_size=32, name="toy_sd")
    cat = load_catalogue()
    gt = catalogue_views(ViewParams(num_views=32, resolution=32), cat)
    prompts = [o.prompt + ", front view" for o in cat.objects for _ in range(8)]
    t0 = time.perf_counter()
    imgs = sample(prior, prompts, steps=20, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    own = (nearest_object(imgs, gt).reshape(len(cat.objects), 8) == torch.arange(len(cat.objects))[:, None])
    return {"own_fraction": float(own.float().mean()), "own": int(own.sum()), "samples": own.numel(),
            "prompts_ge_6of8": int((own.float().mean(1) >= 0.75).sum()), "prompts": len(cat.objects),
            "sample_s": round(time.perf_counter() - t0, 1),
            "per_object": dict(zip(cat.names(), own.float().mean(1).tolist()))}


def probe_table(model: Path, objects: str, seeds: int, views: int, at: str, its: str) -> list[dict]:
    """sctd_investigation's probe on the latent prior (a temporary config: toy.yaml + prior.model)."""
    with tempfile.TemporaryDirectory(prefix="sctd_latent_") as d:
        cfg = Path(d) / "toy_latent.yaml"
        cfg.write_text(f"base: {json.dumps(str(CONFIG_DIR / 'toy.yaml'))}\nprior:\n  model: {json.dumps(str(model))}\n")
        jsonl = Path(d) / "probe.jsonl"
        run_probe(Namespace(priors="toy_sd", config=str(cfg), variants="base", at=at, its=its, objects=objects,
                            seeds=seeds, views=views, jsonl=str(jsonl)))
        return [json.loads(line) for line in jsonl.read_text().splitlines()]


def end_to_end(model: Path, objects: list[str], methods: list[str], iterations: int, seeds: list[int]) -> list[dict]:
    """SDS / SCTD assets from a ball on the latent prior, toy_short settings, scored."""
    from stages.metrics.toy import ToyWorld
    from stages.priors.registry import load_prior
    from stages.toyworld.catalogue import load_catalogue

    cat = load_catalogue()
    extra = [f"prior.model={model}"]
    cfg0 = make_config("toy_sd", methods[0], "base", iterations or None, None, extra, "ablations/toy_short.yaml")
    prior = load_prior(cfg0.prior, "cpu", toy=cfg0.toy)
    world = ToyWorld.from_config(cfg0)
    rows: list[dict] = []
    for seed in seeds:
        for obj in objects:
            prompt = cat.get(obj).prompt
            key = {"prior": "toy_sd_latent", "variant": "toy_short", "prompt": prompt, "seed": seed,
                   "iterations": cfg0.generate.iterations}
            rows.append({**key, "method": "init", "ok": True, "s_asset": 0.0, **init_row(cfg0, prompt, seed, world)})
            for method in methods:
                cfg = make_config("toy_sd", method, "base", iterations or None, None, extra, "ablations/toy_short.yaml")
                rows.append({**key, "method": method, **run_one(cfg, prompt, seed, prior, world)})
                r = rows[-1]
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    return rows


def trajectories(model: Path, objects: str, methods: list[str], iterations: int) -> list[dict]:
    """sctd_investigation's trajectory (toy_short settings run to `iterations`, seed 0) per method."""
    logging.getLogger("stages.generate").propagate = False  # its INFO lines feed run_trajectory only
    with tempfile.TemporaryDirectory(prefix="sctd_latent_") as d:
        jsonl = Path(d) / "trajectory.jsonl"
        for method in methods:
            run_trajectory(Namespace(priors="toy_sd", config="ablations/toy_short.yaml", variants="base",
                                     method=method, iterations=iterations, set=[f"prior.model={model}"],
                                     objects=objects, jsonl=str(jsonl)))
        return [json.loads(line) for line in jsonl.read_text().splitlines()]


def _probe_markdown(rows: list[dict]) -> str:
    lines = ["| at | it | n | cos_g | cos_self | cos_cross | cos(s,c) | cos(g,csd) | abs self | abs cross | inv share "
             "| cos(inv err, render-truth) |", "|" + "---|" * 12]
    for r in rows:
        v = [f"{r[c]:+.2f}" if c.startswith("cos") else f"{r[c]:.2f}" for c in PROBE_COLS]
        lines.append(f"| {r['at']} | {r['it']} | {r['n']} | " + " | ".join(v) + " |")
    return "\n".join(lines)


def _per_object_markdown(rows: list[dict], objects: list[str]) -> str:
    """Per method x seed: PSNR and IoU per object (the order of `objects`)."""
    lines = ["| method | seed | PSNR (" + " / ".join(objects) + ") | IoU (same order) |", "|---|---|---|---|"]
    for m, seed in dict.fromkeys((r["method"], r["seed"]) for r in rows):
        rs = [r for r in rows if r["method"] == m and r["seed"] == seed and r.get("ok")]
        lines.append(f"| {m} | {seed} | " + " / ".join(f"{r['toy_psnr']:.2f}" for r in rs) + " | "
                     + " / ".join(f"{r['toy_iou']:.3f}" for r in rs) + " |")
    return "\n".join(lines)


def _trajectory_markdown(rows: list[dict]) -> str:
    its = [i for i, _, _ in rows[0]["psnr_iou_curve"]]
    lines = ["| method | object | " + " | ".join(f"it {i}" for i in its) + " |", "|" + "---|" * (len(its) + 2)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['prompt']} | "
                     + " | ".join(f"{p:.2f} / {iou:.3f}" for _, p, iou in r["psnr_iou_curve"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from stages.toyworld.prior_training.latent import LATENT_STEPS, default_out_dir

    ap = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(default_out_dir()),
                    help="latent toy SD directory (default: the shipped one; another DIR is trained if missing)")
    ap.add_argument("--unet-steps", type=int, default=LATENT_STEPS)
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--objects", default=",".join(OBJECTS))
    ap.add_argument("--methods", default="sds,sctd")
    ap.add_argument("--iterations", type=int, default=0, help="0 = toy_short's 150")
    ap.add_argument("--seeds", default="0,1,2", help="end-to-end seeds")
    ap.add_argument("--trajectory-its", type=int, default=300, help="0 = no trajectory runs")
    ap.add_argument("--probe-at", default="ball,shape,gt")
    ap.add_argument("--probe-its", default="1,150")
    ap.add_argument("--probe-seeds", type=int, default=3)
    ap.add_argument("--probe-views", type=int, default=4)
    ap.add_argument("--skip-samples", action="store_true")
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # prior.encode without a generator (probe) samples the VAE posterior
    model = Path(a.model).expanduser()
    objects = a.objects.split(",")
    t0 = time.perf_counter()
    info = ensure_model(model, a.unet_steps, a.vae_steps)
    print(f"\n## latent toy SD ({model})\nVAE {info['vae_steps']} steps {info['vae_seconds']} s, reconstruction "
          f"{info['vae_rec_psnr_db']} dB, latents {info['latent_shape']} std {info['latent_std']:.4f} mean "
          f"{info['latent_mean']:.4f} -> scaling_factor {info['scaling_factor']:.4f}, posterior std "
          f"{info['posterior_std_mean']:.4f}; UNet {info['unet_params'] / 1e6:.2f}M params, {info['steps']} steps "
          f"{info['train_seconds']} s, loss (avg last 100) {info['final_loss_avg100']:.4f}", flush=True)
    if not a.skip_samples:
        q = sample_quality(model)
        print(f"samples nearest own object: {q['own']}/{q['samples']} = {q['own_fraction']:.3f}; prompts with >= 6/8: "
              f"{q['prompts_ge_6of8']}/{q['prompts']} ({q['sample_s']} s)\nper object: "
              + ", ".join(f"{k} {v:.2f}" for k, v in q["per_object"].items()), flush=True)
    if not a.skip_probe:
        rows = probe_table(model, a.objects, a.probe_seeds, a.probe_views, a.probe_at, a.probe_its)
        print("\n## probe (latent toy SD, code form, toy.yaml sampler)\n" + _probe_markdown(rows), flush=True)
    if not a.skip_e2e:
        rows = end_to_end(model, objects, a.methods.split(","), a.iterations, [int(s) for s in a.seeds.split(",")])
        print(f"\n## end to end (toy_short, seeds {a.seeds}, ball init)\n" + summarise(rows) + "\n\n"
              + _per_object_markdown(rows, objects), flush=True)
    if a.trajectory_its:
        rows = trajectories(model, a.objects, a.methods.split(","), a.trajectory_its)
        print(f"\n## trajectory (toy_short LRs, {a.trajectory_its} its, seed 0; PSNR dB / IoU)\n"
              + _trajectory_markdown(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
