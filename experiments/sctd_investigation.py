"""Why does SCTD drift on the toy world? Measurements behind docs/SCTD_TOY.md.

Two probes, each printing one line per configuration (and appending JSON lines to --jsonl):

  probe      at a fixed render (ball init, or toy_shape init, or the ground truth itself), for
             several objects x seeds x views: the cosine with (render - ground truth) of the SCTD
             gradient, its self term and its cross term; the cosine between the two terms; and the
             lead hypothesis: the cosine of g with the implicit-classifier direction
             d = e_w(x_t) - eps(x_t, t, null) (= omega (eps_y - eps_null) for CFG with an empty
             negative prompt), plus the share of the cross term that is inversion error
             (z_sm - DDIM(x_t, t -> s_m, eps_null)) rather than guidance (CSD) signal.
  trajectory one asset per configuration through `generate`: PSNR / IoU at 6 points and the term
             norms (self vs cross) from the stage's structured log lines.

  python experiments/sctd_investigation.py probe --priors toy_sd,toy_exact --at ball,shape,gt
  python experiments/sctd_investigation.py trajectory --priors toy_exact --variants base,paper,selfpull

Variants are toy_table.py's plus `selfpull` (investigation only, not a pipeline option): the self
term with the opposite sign, b(t)(z_sm - A), i.e. the gradient of 0.5||z_sm - sg(A)||^2 through z_sm
(how CDS/consistency training reads a self-consistency loss), to test whether the spec's sign of
the self term (A - z_sm, which points away from the ground truth) is what drives the drift.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from toy_table import OBJECTS, make_config, variant_overrides  # noqa: E402

import kernels.distill as distill  # noqa: E402
from kernels.cameras import sample_training_cameras  # noqa: E402
from kernels.ddim import ddim_step  # noqa: E402
from kernels.render import render  # noqa: E402

log = logging.getLogger("sctd_investigation")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double()).mean())


# ------------------------------------------------------------------------------------------------
# probe
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def probe_one(z, z_gt, ts, alphas, eps, eps_star, p) -> dict[str, float]:
    """Cosines and norms of one SCTD gradient evaluation (same inputs as kernels.distill)."""
    g, terms = distill.sctd_grad(z, ts, alphas, eps, eps_star, p)
    g_self, _ = distill.cds_grad(z, ts, alphas, eps, eps_star, p)
    g_cross = g - g_self
    d = z - z_gt
    # lead hypothesis: the implicit-classifier direction at the same x_t
    t, s, s_m = ts.t, ts.s, ts.s_m
    a_t, a_s, a_m = (float(alphas[k]) for k in (t, s, s_m))
    z_sm = math.sqrt(a_m) * z + math.sqrt(1 - a_m) * eps_star
    e0 = eps.null(z_sm, s_m)
    if ts.two_step:
        x_s = ddim_step(z_sm, a_m, a_s, e0)
        x_t = ddim_step(x_s, a_s, a_t, eps.null(x_s, s))
    else:
        x_t = ddim_step(z_sm, a_m, a_t, e0)
    e_w, e_y = eps.guided(x_t, t)
    e_n = eps.null(x_t, t)
    csd = e_w - e_n
    b_null = ddim_step(x_t, a_t, a_m, e_n)               # G(x_t, t, null) by one DDIM jump
    inv_err = z_sm - b_null                              # zero when inversion is exact
    guid = b_null - ddim_step(x_t, a_t, a_m, e_w)        # the CSD part of (z_sm - B)
    return {
        "cos_g": _cos(g, d), "cos_self": _cos(g_self, d), "cos_cross": _cos(g_cross, d),
        "cos_self_cross": _cos(g_self, g_cross), "cos_g_csd": _cos(g, csd), "cos_csd_gt": _cos(csd, d),
        "self_norm": terms["self_norm"], "cross_norm": terms["cross_norm"],
        "inv_err_share": float(inv_err.norm() / (inv_err.norm() + guid.norm())),
        "cos_inverr_gt": _cos(inv_err, d), "t": float(t), "s_m": float(s_m),
    }


def run_probe(a) -> None:
    from stages.kernel_params import camera_params, schedule
    from stages.methods.sctd import consistency_params
    from stages.init import init_gaussians
    from stages.priors.guidance import make_guided_eps_from_config
    from stages.priors.registry import load_prior
    from stages.toyworld.catalogue import build_object, load_catalogue

    cat = load_catalogue()
    for prior_name in a.priors.split(","):
        cfg0 = make_config(prior_name, "sctd", "base", None, None, [], a.config)
        prior = load_prior(cfg0.prior, "cpu", toy=cfg0.toy)
        alphas = prior.alphas_cumprod.float()
        for variant in a.variants.split(","):
            cfg = make_config(prior_name, "sctd", variant, None, None, [], a.config)
            p = consistency_params(cfg)
            sched, cam_p = schedule(cfg), camera_params(cfg)
            for at in a.at.split(","):
                for it in (int(i) for i in a.its.split(",")):
                    rows = []
                    for obj in a.objects.split(","):
                        prompt = cat.get(obj).prompt
                        gt = build_object(prompt)
                        if at == "ball":
                            g0 = init_gaussians(replace(cfg.init, method="ball"), prompt, torch.Generator().manual_seed(0))
                        elif at == "shape":
                            g0 = init_gaussians(replace(cfg.init, method="toy_shape"), prompt,
                                                torch.Generator().manual_seed(0))
                        elif at == "gt":
                            g0 = gt
                        else:
                            raise ValueError(f"--at {at!r}: use ball, shape or gt")
                        for seed in range(a.seeds):
                            gen = torch.Generator().manual_seed(100 + seed)
                            cams = sample_training_cameras(a.views, 32, 32, it, cam_p, gen)
                            bg = torch.zeros(a.views, 3)
                            z = prior.encode(render(g0, cams, background=bg, backend="torch").rgb.permute(0, 3, 1, 2))
                            z_gt = prior.encode(render(gt, cams, background=bg, backend="torch").rgb.permute(0, 3, 1, 2))
                            if at == "gt":      # cos with render - gt is undefined; use render - ball
                                ball = init_gaussians(replace(cfg.init, method="ball"), prompt,
                                                      torch.Generator().manual_seed(0))
                                z_gt = prior.encode(render(ball, cams, background=bg, backend="torch").rgb.permute(0, 3, 1, 2))
                            eps = make_guided_eps_from_config(prior, cfg.prior, prompt, cams.azimuth_deg.tolist())
                            eps_star = distill.make_eps_star(tuple(z.shape), cfg.generate.sctd.eps_star_offset, gen)
                            ts = distill.get_method("sctd").sample(it, sched, gen)
                            rows.append(probe_one(z.detach(), z_gt.detach(), ts, alphas, eps, eps_star, p))
                    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
                    row = {"probe": True, "prior": prior_name, "variant": variant, "at": at, "it": it,
                           "n": len(rows), **{k: round(v, 4) for k, v in mean.items()}}
                    _emit(row, a.jsonl)


# ------------------------------------------------------------------------------------------------
# trajectory
# ------------------------------------------------------------------------------------------------
def _selfpull_grad(z, ts, alphas, eps, eps_star, p):
    """Investigation only: SCTD with the self term's sign flipped, b(t)[(z_sm - A) + (omega+1)(z_sm - B)]."""
    g, terms = distill.sctd_grad(z, ts, alphas, eps, eps_star, p)
    g_self, _ = distill.cds_grad(z, ts, alphas, eps, eps_star, p)
    terms = dict(terms)
    terms["unet_calls"] = terms["unet_calls"] + 3.0
    return g - 2.0 * g_self, terms


class _TermLog(logging.Handler):
    """Collects the generate stage's structured progress lines ('generate {json}')."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("generate {"):
            self.rows.append(json.loads(msg[len("generate "):]))


def run_trajectory(a) -> None:
    from kernels.ply import load_ply
    from stages.generate import generate
    from stages.metrics.toy import ToyWorld, toy_metrics
    from stages.priors.registry import load_prior
    from stages.toyworld.catalogue import load_catalogue

    cat = load_catalogue()
    h = _TermLog()
    glog = logging.getLogger("stages.generate")
    glog.addHandler(h)
    glog.setLevel(logging.INFO)
    original = distill.METHODS["sctd"]
    for prior_name in a.priors.split(","):
        cfg0 = make_config(prior_name, "sctd", "base", None, None, [], a.config)
        prior = load_prior(cfg0.prior, "cpu", toy=cfg0.toy)
        world = ToyWorld.from_config(cfg0)
        for variant in a.variants.split(","):
            parts = variant.split("+")
            selfpull = "selfpull" in parts
            rest = "+".join(x for x in parts if x != "selfpull") or "base"
            cfg = make_config(prior_name, a.method, rest, a.iterations or None, None, list(a.set), a.config)
            n = cfg.generate.iterations
            k = max(1, n // 6)
            cfg = make_config(prior_name, a.method, rest, a.iterations or None, None,
                              list(a.set) + [f"generate.save_ply_at=[{','.join(str(i) for i in range(k, n + 1, k))}]"],
                              a.config)
            for obj in a.objects.split(","):
                prompt = cat.get(obj).prompt
                h.rows.clear()
                distill.METHODS["sctd"] = (distill.DistillMethod("sctd", _selfpull_grad, original.sample, True)
                                           if selfpull else original)
                try:
                    with tempfile.TemporaryDirectory(prefix="sctd_inv_") as d:
                        t0 = time.perf_counter()
                        res = generate(cfg, prompt, 0, d, progress=False, prior=prior)
                        wall = time.perf_counter() - t0
                        curve = []
                        for i in range(k, n + 1, k):
                            f = Path(d) / ("asset.ply" if i == n else f"asset_it{i}.ply")
                            if f.exists():
                                m = toy_metrics(cfg, load_ply(str(f)), prompt, world, rprec=False)
                                curve.append((i, round(m["toy_psnr"], 2), round(m["toy_iou"], 3)))
                finally:
                    distill.METHODS["sctd"] = original
                norms = [(r["it"], round(r.get("self_norm", r.get("sds_norm", 0.0)), 3),
                          round(r.get("cross_norm", 0.0), 3)) for r in h.rows]
                row = {"trajectory": True, "prior": prior_name, "method": a.method, "variant": variant,
                       "prompt": prompt, "iterations": n, "ok": res.ok, "s_asset": round(wall, 1),
                       "psnr_iou_curve": curve, "norms_self_cross": norms}
                _emit(row, a.jsonl)


def _emit(row: dict, path: str) -> None:
    print(json.dumps(row), flush=True)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("probe", "trajectory"))
    ap.add_argument("--config", default="toy.yaml")
    ap.add_argument("--priors", default="toy_sd")
    ap.add_argument("--variants", default="base")
    ap.add_argument("--objects", default=",".join(OBJECTS))
    ap.add_argument("--at", default="ball", help="probe: ball,shape,gt")
    ap.add_argument("--its", default="1", help="probe: iteration numbers (warm-up state of the sampler)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--method", default="sctd", help="trajectory: generate.method")
    ap.add_argument("--iterations", type=int, default=0)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--jsonl", default="")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    for v in a.variants.split(","):
        variant_overrides("+".join(x for x in v.split("+") if x != "selfpull") or "base")
    (run_probe if a.mode == "probe" else run_trajectory)(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
