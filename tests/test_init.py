"""Initial Gaussians: ball, toy shape, Point-E expansion and its missing-package error."""

from __future__ import annotations

import math

import pytest
import torch

from common.config import InitConfig
from stages import init as init_mod
from stages.init import (
    InitError,
    expand_points,
    gaussians_from_points,
    init_gaussians,
    knn_mean_sq_dist,
    knn_mean_sq_dist_reference,
    point_e_to_world,
    sample_ball,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_ball_init_counts_radius_opacity_and_grey():
    cfg = InitConfig(method="ball", ball_num_gaussians=3000, ball_radius=0.7, sh_degree=1)
    g = init_gaussians(cfg, "anything", gen())
    assert g.num() == 3000 and g.sh_degree == 1 and g.sh.shape == (3000, 4, 3)
    r = g.means.norm(dim=1)
    assert r.max() <= 0.7 + 1e-6 and r.max() > 0.65
    # uniform in r (LucidDreamer), not in volume: the median radius is about half the ball radius
    assert abs(r.median().item() - 0.35) < 0.03
    torch.testing.assert_close(g.opacities, torch.full((3000,), 0.1))
    assert (g.colors - 0.5).abs().max() < 0.01  # near-grey
    assert torch.all(g.sh[:, 1:] == 0)
    torch.testing.assert_close(g.rotations, torch.tensor([[1.0, 0, 0, 0]]).expand(3000, 4))


def test_ball_init_is_deterministic():
    cfg = InitConfig(method="ball", ball_num_gaussians=500)
    a, b = init_gaussians(cfg, "p", gen(3)), init_gaussians(cfg, "p", gen(3))
    c = init_gaussians(cfg, "p", gen(4))
    for name in ("means", "log_scales", "sh"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.means, c.means)


def test_knn_kdtree_matches_reference():
    pts = torch.randn(400, 3, generator=gen(1))
    torch.testing.assert_close(knn_mean_sq_dist(pts), knn_mean_sq_dist_reference(pts), rtol=1e-5, atol=1e-7)


def test_scales_from_neighbour_distance_or_config():
    pts = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0], [0.4, 0, 0]])
    g = gaussians_from_points(pts, InitConfig(), gen())
    # middle point: neighbours at 0.1, 0.1, 0.2 -> mean sq = 0.02
    assert g.scales[2, 0].item() == pytest.approx(math.sqrt(0.02), rel=1e-4)
    g2 = gaussians_from_points(pts, InitConfig(initial_scale=0.03), gen())
    torch.testing.assert_close(g2.scales, torch.full((5, 3), 0.03))
    with pytest.raises(ValueError, match="initial_opacity"):
        gaussians_from_points(pts, InitConfig(initial_opacity=1.0), gen())


def test_expand_points_shape_and_ball():
    pts = torch.tensor([[0.0, 0, 0], [1.0, 2, 3], [-1.0, 0, 5]])
    out = expand_points(pts, 20, 0.05, gen())
    assert out.shape == (60, 3)
    groups = out.view(3, 20, 3)
    d = (groups - pts[:, None]).norm(dim=-1)
    assert d.max() <= 0.05 + 1e-6 and d.max() > 0.03
    # the same offsets for every point (LucidDreamer's broadcasting)
    torch.testing.assert_close(groups[1] - pts[1], groups[0] - pts[0])
    with pytest.raises(ValueError, match="N, 3"):
        expand_points(torch.zeros(4, 2), 20, 0.05, gen())


def test_point_e_spec_count_on_fake_points():
    """4096 fake Point-E points -> 81,920 Gaussians, as the spec's init."""
    cfg = InitConfig()
    fake = torch.rand(cfg.num_points, 3, generator=gen(5)) - 0.5
    pts = expand_points(fake, cfg.gaussians_per_point, cfg.point_radius, gen(6))
    g = gaussians_from_points(pts, cfg, gen(7))
    assert g.num() == 81920
    torch.testing.assert_close(g.opacities, torch.full((81920,), 0.1))


def test_point_e_axes():
    xyz = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = point_e_to_world(xyz)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))


def test_point_e_missing_package_error(monkeypatch):
    monkeypatch.setattr(init_mod, "point_e_available", lambda: False)
    with pytest.raises(InitError) as ei:
        init_gaussians(InitConfig(method="point_e"), "a hamburger", gen())
    msg = str(ei.value)
    assert init_mod.POINT_E_INSTALL in msg and '"point-e @ git+https://github.com/openai/point-e.git@' in msg
    assert "init.method=ball" in msg and "toy_shape" in msg


def test_point_e_really_absent_here():
    if init_mod.point_e_available():
        pytest.skip("point-e is installed on this machine")
    with pytest.raises(InitError, match="point-e"):
        init_gaussians(InitConfig(method="point_e"), "a hamburger", gen())


def test_toy_shape_follows_object_geometry_not_colour():
    from stages.toyworld.catalogue import build_object, load_catalogue

    prompt = load_catalogue().prompts()[0]
    cfg = InitConfig(method="toy_shape", ball_num_gaussians=2000, shape_noise=0.02)
    g = init_gaussians(cfg, prompt, gen())
    obj = build_object(prompt)
    assert g.num() == 2000
    assert (g.colors - 0.5).abs().max() < 0.01  # colours are not taken from the toy object
    # every init point lies near the object's surface (noise 0.02 -> within ~0.1)
    d = torch.cdist(g.means, obj.means).min(dim=1).values
    assert d.max() < 0.12
    # and it differs from a ball: a ball's points are far from the surface more often
    ball = sample_ball(2000, cfg.ball_radius, gen())
    assert torch.cdist(ball, obj.means).min(dim=1).values.mean() > 2 * d.mean()
    a, b = init_gaussians(cfg, prompt, gen(1)), init_gaussians(cfg, prompt, gen(1))
    assert torch.equal(a.means, b.means)


def test_toy_shape_unknown_prompt_and_bad_method():
    with pytest.raises(ValueError, match="not in the catalogue"):
        init_gaussians(InitConfig(method="toy_shape", ball_num_gaussians=10), "a purple dragon", gen())
    cfg = InitConfig()
    cfg.method = "shap_e"
    with pytest.raises(ValueError, match="shap_e"):
        init_gaussians(cfg, "x", gen())
