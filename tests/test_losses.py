"""The extra-loss registry: one function per `generate.losses` weight, summed with its weight."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels.cameras import orbit_cameras
from kernels.render import render
from common.config import LossConfig
from stages import losses
from stages.init import init_gaussians
from common.config import load_config


def test_every_config_weight_has_a_loss_and_every_loss_a_weight():
    assert [f.name for f in dataclasses.fields(LossConfig)] == list(losses.LOSSES)


def test_weighted_sum_uses_the_config_weights_and_skips_zero_weights():
    cfg = load_config("toy.yaml", ["init.ball_num_gaussians=50", "generate.losses.tv_rgb=0.5",
                                   "generate.losses.tv_depth=0", "generate.losses.mean_scale=2.0"])
    g = init_gaussians(cfg.init, "a cube", torch.Generator().manual_seed(0))
    out = render(g, orbit_cameras(2, 10.0, 2.7, 0.6, 16, 16), backend="torch")
    w = losses.loss_weights(cfg.generate.losses)
    assert w == {"tv_rgb": 0.5, "tv_depth": 0.0, "mean_scale": 2.0}
    values = losses.extra_losses(w, out, g)
    assert list(values) == ["tv_rgb", "mean_scale"]              # zero weight: not even computed
    total = losses.add_weighted(torch.zeros(()), values, w)
    want = 0.5 * losses.tv_loss(out.rgb) + 2.0 * g.scales.mean()
    torch.testing.assert_close(total, want)


def test_a_weight_without_a_loss_is_refused():
    @dataclasses.dataclass
    class Section:
        tv_rgb: float = 1.0
        sharpness: float = 1.0

    with pytest.raises(ValueError, match="generate.losses.sharpness: no such loss"):
        losses.loss_weights(Section())
