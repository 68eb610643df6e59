"""The paper's comparison in miniature, on the toy world (ground truth known).

Methods x objects x seeds x priors x variants, each asset generated from configs/toy.yaml plus
overrides, scored with stages.metrics.toy (PSNR on held-out orbit cameras, yaw-aligned PSNR,
silhouette IoU, R-precision) and timed (s/asset). One process, one thread; run two processes
with disjoint subsets to use both cores.

  python experiments/toy_table.py --priors toy_exact --methods sds,sctd,ism,cds,gcs \
      --objects red_cube,green_sphere,blue_cone,yellow_torus --seeds 0 --iterations 300
  python experiments/toy_table.py --variants base,ns1,ns10,paper,approx_off,shape --methods sctd

Variants (named, each a few config overrides; `base` = toy.yaml as is):
  base, short4 (lr x4, warm-up / 4: for 150-iteration runs), toyaug (toy-world augmentation: no random backgrounds, no depth-as-input, see
  RESULTS.md "toy table"), ns1, ns5, ns10, mono, paper (cross_term=conditional), approx_off,
  shape (init.method=toy_shape), warmup0 (no timestep warm-up), and combinations joined by '+'
  (e.g. toyaug+paper).
Rows are printed as they finish and appended as JSON lines to --jsonl; a summary (mean per
prior x method x variant) is printed at the end as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import load_config  # noqa: E402

log = logging.getLogger("toy_table")

# Toy-world augmentation: the spec's random backgrounds and depth-as-input are SD tricks; a toy
# prior trained on black-background RGB views reads them as wrong images (measured: SDS, exact
# prior, red cube, 300 its: 7.9 dB with them, 15.4 dB without; RESULTS.md "toy table").
TOYAUG = ["generate.augment.background_random_p=0", "generate.augment.depth_input_p=0"]

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "toyaug": TOYAUG,
    "ns1": ["generate.sctd.n_segments=1"],
    "ns5": ["generate.sctd.n_segments=5"],
    "ns10": ["generate.sctd.n_segments=10"],
    "mono": ["generate.sctd.segments=mono"],
    "paper": ["generate.sctd.cross_term=conditional"],
    "approx_off": ["generate.sctd.consistency_approx=false"],
    "shape": ["init.method=toy_shape"],
    "warmup0": ["generate.sctd.warmup_iters=0", "generate.sctd.warmup_span=0"],
    # a 4x shorter run (150 instead of toy.yaml's 600 iterations): learning rates x4 (with Adam the
    # per-step change is ~lr, so a shorter run needs larger steps to travel as far), SCTD warm-up / 4
    "short4": ["generate.sctd.warmup_iters=45","generate.optim.position_lr_init=0.00064", "generate.optim.position_lr_final=0.0000064",
            "generate.optim.color_lr_init=0.02", "generate.optim.color_lr_final=0.012",
            "generate.optim.scale_lr_init=0.02", "generate.optim.scale_lr_final=0.004",
            "generate.optim.rotation_lr_init=0.004", "generate.optim.rotation_lr_final=0.0008"],
    "noloss": ["generate.losses.tv_rgb=0", "generate.losses.tv_depth=0", "generate.losses.mean_scale=0"],
}

OBJECTS = ["red_cube", "green_sphere", "blue_cone", "yellow_torus"]
METHODS = ["sctd", "sds", "ism", "cds", "gcs"]
METRICS = ["toy_psnr", "toy_psnr_yaw", "toy_iou", "toy_rprec"]


def variant_overrides(name: str) -> list[str]:
    """Overrides of a '+'-joined variant name (unknown parts raise with the known names)."""
    out: list[str] = []
    for part in name.split("+"):
        if part not in VARIANTS:
            raise ValueError(f"unknown variant {part!r}; choose from {sorted(VARIANTS)} (join with '+')")
        out += VARIANTS[part]
    return out


def make_config(prior: str, method: str, variant: str, iterations: int | None, batch_views: int | None,
                extra: list[str], base: str = "toy.yaml"):
    ov = [f"prior.name={prior}", f"generate.method={method}", "generate.checkpoint_every=0",
          "generate.save_ply_at=[]"]
    if iterations:
        ov.append(f"generate.iterations={iterations}")
    if batch_views:
        ov.append(f"generate.batch_views={batch_views}")
    return load_config(base, ov + variant_overrides(variant) + list(extra))


def run_one(cfg, prompt: str, seed: int, prior, world) -> dict:
    """Generate one asset into a temporary directory and score it."""
    from kernels.ply import load_ply
    from stages.generate import generate
    from stages.metrics.toy import toy_metrics

    with tempfile.TemporaryDirectory(prefix="toy_table_") as d:
        t0 = time.perf_counter()
        res = generate(cfg, prompt, seed, d, progress=False, prior=prior)
        wall = time.perf_counter() - t0
        if not res.ok:
            return {"ok": False, "error": res.error, "s_asset": wall}
        m = toy_metrics(cfg, load_ply(res.asset_ply), prompt, world)
        terms = res.meta.get("terms", {})
    row = {"ok": True, "s_asset": wall, "s_it": wall / max(1, res.iterations),
           "unet_calls_it": res.meta.get("unet_calls_per_iteration"), **m}
    for k in ("self_norm", "cross_norm", "sds_norm", "ism_norm", "grad_norm"):
        if k in terms:
            row[f"{k}_first"] = terms[k]["first10pct"]
            row[f"{k}_last"] = terms[k]["last10pct"]
    return row


def init_row(cfg, prompt: str, seed: int, world) -> dict:
    """The metrics of the initial Gaussians (what 'recovery' must beat)."""
    from stages.init import init_gaussians
    from stages.metrics.toy import toy_metrics

    g0 = init_gaussians(cfg.init, prompt, torch.Generator().manual_seed(seed))
    return toy_metrics(cfg, g0, prompt, world)


def summarise(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("ok"):
            groups.setdefault((r["prior"], r["method"], r["variant"], r["iterations"]), []).append(r)
    lines = ["| prior | method | variant | its | n | PSNR | PSNR yaw | IoU | R-prec | s/asset |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (pr, me, va, its), rs in sorted(groups.items()):
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in METRICS + ["s_asset"]}
        lines.append(f"| {pr} | {me} | {va} | {its} | {len(rs)} | {mean['toy_psnr']:.2f} | "
                     f"{mean['toy_psnr_yaw']:.2f} | {mean['toy_iou']:.3f} | {mean['toy_rprec']:.2f} | "
                     f"{mean['s_asset']:.0f} |")
    return "\n".join(lines)


def per_object(rows: list[dict]) -> str:
    """Mean PSNR per prompt (over seeds) x method, plus the paired comparison of every method with
    SDS on the (prompt, seed) pairs both ran: how many pairs and prompts SDS leads."""
    ok = [r for r in rows if r.get("ok")]
    methods = list(dict.fromkeys(r["method"] for r in ok))
    prompts = list(dict.fromkeys(r["prompt"] for r in ok))
    cell: dict[tuple, list[float]] = {}
    for r in ok:
        cell.setdefault((r["prompt"], r["method"]), []).append(r["toy_psnr"])
    lines = ["| prompt | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for p in prompts:
        vals = [f"{sum(v) / len(v):.2f} ({len(v)})" if (v := cell.get((p, m))) else "-" for m in methods]
        lines.append(f"| {p} | " + " | ".join(vals) + " |")
    by_pair = {(r["prompt"], r["seed"], r["method"]): r["toy_psnr"] for r in ok}
    for m in methods:
        if m in ("sds", "init"):
            continue
        pairs = [(p, s) for (p, s, mm) in by_pair if mm == m and (p, s, "sds") in by_pair]
        if not pairs:
            continue
        lead = sum(by_pair[(p, s, "sds")] > by_pair[(p, s, m)] for p, s in pairs)
        mean_sds = sum(by_pair[(p, s, "sds")] for p, s in pairs) / len(pairs)
        mean_m = sum(by_pair[(p, s, m)] for p, s in pairs) / len(pairs)
        objs = sorted({p for p, _ in pairs})
        obj_lead = sum(sum(by_pair[(p, s, "sds")] for pp, s in pairs if pp == p) >
                       sum(by_pair[(p, s, m)] for pp, s in pairs if pp == p) for p in objs)
        lines.append(f"\n{m} vs sds on {len(pairs)} shared (prompt, seed) pairs: sds {mean_sds:.2f} vs {m} {mean_m:.2f} dB; "
                     f"sds ahead on {lead}/{len(pairs)} pairs and {obj_lead}/{len(objs)} prompts")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="toy.yaml",
                    help="base config (e.g. ablations/toy_short.yaml: the CI-sized toy run)")
    ap.add_argument("--priors", default="toy_exact", help="comma list: toy_exact,toy_sd")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--objects", default=",".join(OBJECTS), help="catalogue names or prompts")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default="base", help=f"comma list of {sorted(VARIANTS)} ('+' joins)")
    ap.add_argument("--iterations", type=int, default=0, help="0 = toy.yaml's")
    ap.add_argument("--batch-views", type=int, default=0, help="0 = toy.yaml's")
    ap.add_argument("--set", action="append", default=[], help="extra config override key=value")
    ap.add_argument("--init", action="store_true", help="also score the initial Gaussians")
    ap.add_argument("--jsonl", default="", help="append one JSON line per asset here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarise", default="", metavar="JSONL",
                    help="only print the summary and the per-prompt table of an earlier --jsonl file")
    a = ap.parse_args(argv)
    if a.summarise:
        with open(a.summarise, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print(summarise(rows))
        print(per_object(rows))
        return 0
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)

    from stages.metrics.toy import ToyWorld
    from stages.priors.registry import load_prior
    from stages.toyworld.catalogue import load_catalogue

    cat = load_catalogue()
    prompts = [cat.get(o).prompt for o in a.objects.split(",")]
    methods = a.methods.split(",")
    variants = a.variants.split(",")
    for v in variants:
        variant_overrides(v)
    rows: list[dict] = []
    for prior_name in a.priors.split(","):
        cfg0 = make_config(prior_name, methods[0], variants[0], a.iterations, a.batch_views, a.set, a.config)
        prior = load_prior(cfg0.prior, "cpu", toy=cfg0.toy)
        world = ToyWorld.from_config(cfg0)
        for variant in variants:
            for method in methods:
                cfg = make_config(prior_name, method, variant, a.iterations, a.batch_views, a.set, a.config)
                for prompt in prompts:
                    for seed in (int(s) for s in a.seeds.split(",")):
                        key = {"prior": prior_name, "model": cfg.prior.model, "method": method, "variant": variant, "prompt": prompt,
                               "seed": seed, "iterations": cfg.generate.iterations,
                               "batch_views": cfg.generate.batch_views}
                        if a.init and method == methods[0]:
                            r0 = {**key, "method": "init", "ok": True, "s_asset": 0.0,
                                  **init_row(cfg, prompt, seed, world)}
                            rows.append(r0)
                            _emit(r0, a.jsonl)
                        r = {**key, **run_one(cfg, prompt, seed, prior, world)}
                        rows.append(r)
                        _emit(r, a.jsonl)
    print(summarise(rows))
    return 0


def _emit(row: dict, path: str) -> None:
    short = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
    print(json.dumps(short), flush=True)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
