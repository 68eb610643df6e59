"""End to end on the toy world: SDS turns the ball init into the prompt's object, with both priors.

Configuration: configs/ablations/toy_short.yaml = configs/toy.yaml (SDS, ball init) with:
- 150 iterations instead of 600, 2 views per iteration instead of 4 (CPU budget: 8 assets in
  about 3 minutes on one thread);
- learning rates x4 (`experiments/toy_table.py` variant `short4`): with Adam (eps 1e-15) each step
  moves a parameter by about its learning rate, so a 4x shorter run needs 4x larger steps;
- the augmentation-off setting now in configs/toy.yaml (toy_table variant `toyaug`): no random backgrounds and no
  depth-as-input (SCTD warm-up 45 too, unused by SDS). Both are SD tricks; a toy prior trained
  on black-background RGB views reads them as wrong images.
  Measured (SDS, exact prior, red cube, 600 its, toy.yaml as is): 11.6 dB at it 100 falling to
  6.9 dB at it 600; with toyaug, 300 its: 15.4 dB and rising (benchmarks/RESULTS.md "toy table").

Measured (seed 0, these settings; init = the ball before any iteration):
  exact prior (2026-11-25):  PSNR red_cube 8.48 -> 15.59, green_sphere 10.96 -> 19.01, blue_cone
                10.21 -> 22.24, yellow_torus 10.26 -> 13.17 (yaw-aligned 15.26); mean 17.50 dB, IoU 0.817
  toy SD `toy` (latent, the default; 5000-step UNet + VAE; 2026-12-01): red_cube 11.66 (+3.19),
                green_sphere 12.40 (+1.44), blue_cone 13.92 (+3.71), yellow_torus 14.27 (+4.02);
                mean 13.06 dB (+3.09 over init), IoU 0.758
  toy SD `toy_pixel` (3000 steps; 2026-12-01): red_cube 15.31 (+6.83), green_sphere 13.95 (+2.99),
                blue_cone 17.34 (+7.13), yellow_torus 13.77 (+3.52); mean 15.09 dB (+5.12), IoU 0.781
SDS recovers less on the latent toy SD than on the pixel one (it answers prompts better: 92% vs 70%
of samples nearest their own object, tests/test_toy_sd.py); why is not measured (benchmarks/RESULTS.md
"Latent toy SD shipped").
Thresholds sit below those numbers with a margin for platform float differences; they must fail
for an asset that stays a ball (init) or drifts (SDS with the spec's augmentation on the toy
world: 6.9 dB). Retrained weights may move them (re-measure with
`experiments/toy_table.py --config ablations/toy_short.yaml --priors toy_sd --set prior.model=...`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels.ply import load_ply  # noqa: E402
from common.config import load_config  # noqa: E402
from stages.generate import generate  # noqa: E402
from stages.init import init_gaussians  # noqa: E402
from stages.metrics.toy import ToyWorld, toy_metrics  # noqa: E402
from stages.priors.registry import load_prior  # noqa: E402

OBJECTS = ["a red cube", "a green sphere", "a blue cone", "a yellow torus"]

# per prior (prior.name/prior.model): (min mean PSNR, min mean gain over init in dB, min gain per
# object, min mean IoU), measured values in the comments (seed 0, toy_short.yaml)
THRESHOLDS = {
    "toy_exact": (15.0, 5.0, 2.0, 0.75),     # measured 17.50, +7.52, min +2.91 (torus), 0.817
    "toy_sd/toy": (12.0, 2.0, 0.5, 0.70),    # latent toy SD (the default): measured 13.06, +3.09, min +1.44 (sphere), 0.758
    "toy_sd/toy_pixel": (14.0, 4.0, 2.0, 0.72),  # pixel toy SD: measured 15.09, +5.12, min +2.99 (sphere), 0.781
}
MIN_IMPROVED = {"toy_exact": 4, "toy_sd/toy": 4, "toy_sd/toy_pixel": 4}  # objects whose PSNR rose by >= 0.5 dB (all 4)


def _cfg(prior: str):
    name, _, model = prior.partition("/")
    extra = [f"prior.model={model}"] if model else []
    return load_config("ablations/toy_short.yaml", [f"prior.name={name}", "generate.checkpoint_every=0",
                                                    "generate.save_ply_at=[]", *extra])




@pytest.mark.parametrize("prior_name", [
    "toy_exact",
    pytest.param("toy_sd/toy"),
    pytest.param("toy_sd/toy_pixel"),
])
def test_sds_recovers_toy_objects_from_ball(prior_name: str) -> None:
    cfg = _cfg(prior_name)
    assert cfg.generate.method == "sds" and cfg.init.method == "ball" and cfg.generate.iterations == 150
    prior = load_prior(cfg.prior, "cpu")
    world = ToyWorld.from_config(cfg)
    psnr, gain, iou = [], [], []
    for prompt in OBJECTS:
        g0 = init_gaussians(cfg.init, prompt, torch.Generator().manual_seed(0))
        m0 = toy_metrics(cfg, g0, prompt, world, rprec=False)
        with tempfile.TemporaryDirectory() as d:
            res = generate(cfg, prompt, 0, d, progress=False, prior=prior)
            assert res.ok, res.error
            m = toy_metrics(cfg, load_ply(res.asset_ply), prompt, world, rprec=False)
        psnr.append(m["toy_psnr"])
        gain.append(m["toy_psnr"] - m0["toy_psnr"])
        iou.append(m["toy_iou"])
    min_psnr, min_gain, min_obj_gain, min_iou = THRESHOLDS[prior_name]
    report = {p: (round(a, 2), round(b, 2), round(c, 3)) for p, a, b, c in zip(OBJECTS, psnr, gain, iou)}
    print(prior_name, report, "mean", round(sum(psnr) / 4, 2), round(sum(gain) / 4, 2), round(sum(iou) / 4, 3))
    assert sum(psnr) / 4 >= min_psnr, report
    assert sum(gain) / 4 >= min_gain, report
    assert min(gain) >= min_obj_gain, report
    assert sum(iou) / 4 >= min_iou, report
    assert sum(g >= 0.5 for g in gain) >= MIN_IMPROVED[prior_name], report
