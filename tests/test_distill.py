"""SCTD / SDS / ISM / CDS / GCS gradients against the spec's steps written out in the test.

The prior is a test double, `FakeGuidedEps`, built on an analytic denoiser: for data
x0 ~ N(mu_c, v I) the exact noise prediction is sqrt(1-a) (x - sqrt(a) mu_c) / (a v + 1 - a).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sd_alphas

from kernels.ddim import TimestepParams, TimestepSample, segment_edges
from kernels.distill import (
    METHODS,
    ISMParams,
    SCTDParams,
    SDSParams,
    cds_grad,
    gcs_grad,
    get_method,
    ism_grad,
    latent_grad_loss,
    make_eps_star,
    make_schedule,
    sctd_grad,
    sds_grad,
)




class FakeGuidedEps:
    """Test double of GuidedEps: Gaussian data per prompt, exact eps, CFG or a Perp-Neg-like rule."""

    def __init__(self, alphas, mu_null, mu_y, omega=7.5, v=0.25, rule="cfg", const_null=None):
        self.alphas, self.mu_null, self.mu_y, self.omega, self.v = alphas, mu_null, mu_y, omega, v
        self.rule, self.const_null = rule, const_null
        self.calls = 0

    def _eps(self, x, t, mu):
        a = float(self.alphas[t])
        return math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * self.v + 1 - a)

    def null(self, x, t):
        self.calls += 1
        if self.const_null is not None:
            return self.const_null.expand_as(x).clone()
        return self._eps(x, t, self.mu_null)

    def guided(self, x, t):
        self.calls += 1
        e_y = self._eps(x, t, self.mu_y)
        e_n = self.const_null.expand_as(x).clone() if self.const_null is not None else self._eps(x, t, self.mu_null)
        if self.rule == "cfg":
            return e_n + self.omega * (e_y - e_n), e_y
        # a Perp-Neg-like combination: a different guided rule through the same code path
        return e_n + self.omega * (e_y - e_n) - 0.5 * (e_y - e_n).sign(), e_y


def ddim(x, a1, a2, e):
    return math.sqrt(a2) * (x - math.sqrt(1 - a1) * e) / math.sqrt(a1) + math.sqrt(1 - a2) * e


def reference_sctd(z, ts, a, fake, eps_star, omega, lam, approx=True, cross="guided",
                   use_self=True, use_cross=True):
    """docs/METHOD.md "One SCTD step" 2-10 written out independently; returns (b * g, unscaled g)."""
    at, as_, am = (float(a[k]) for k in (ts.t, ts.s, ts.s_m))
    z_sm = math.sqrt(am) * z + math.sqrt(1 - am) * eps_star
    if ts.two_step:
        x_s = ddim(z_sm, am, as_, fake.null(z_sm, ts.s_m))
        x_t = ddim(x_s, as_, at, fake.null(x_s, ts.s))
    else:
        x_t = ddim(z_sm, am, at, fake.null(z_sm, ts.s_m))
    e_w, e_y = fake.guided(x_t, ts.t)
    G = z_sm if approx else ddim(x_t, at, am, fake.null(x_t, ts.t))
    g = torch.zeros_like(z)
    if use_self:
        x_s_hat = ddim(x_t, at, as_, e_w)
        A = ddim(x_s_hat, as_, am, fake.null(x_s_hat, ts.s))
        g = g + (A - G)
    if use_cross:
        B = ddim(x_t, at, am, e_w if cross == "guided" else e_y)
        g = g + (omega + 1) * (G - B)
    b = lam * math.sqrt((1 - at) / at)
    return b * g, g


def world(seed=0, shape=(2, 4, 6, 6)):
    gen = torch.Generator().manual_seed(seed)
    mu_null = torch.randn(1, *shape[1:], generator=gen) * 0.3
    mu_y = torch.randn(1, *shape[1:], generator=gen)
    z = mu_null + 0.1 * torch.randn(shape, generator=gen)
    eps_star = make_eps_star(shape, 0.1, gen)
    return z, mu_null, mu_y, eps_star


TS_TWO = TimestepSample(t=600, s=450, s_m=403, two_step=True)
TS_ONE = TimestepSample(t=120, s=60, s_m=19, two_step=False)


@pytest.mark.parametrize("ts", [TS_TWO, TS_ONE])
@pytest.mark.parametrize("approx", [True, False])
@pytest.mark.parametrize("cross", ["guided", "conditional"])
@pytest.mark.parametrize("rule", ["cfg", "perpneg_like"])
def test_sctd_matches_reference(ts, approx, cross, rule):
    a = sd_alphas()
    z, mn, my, es = world()
    p = SCTDParams(guidance_scale=7.5, weight_lambda=0.1, consistency_approx=approx, cross_term=cross)
    fake = FakeGuidedEps(a, mn, my, rule=rule)
    g, terms = sctd_grad(z, ts, a, fake, es, p)
    want, unscaled = reference_sctd(z, ts, a, FakeGuidedEps(a, mn, my, rule=rule), es, 7.5, 0.1, approx, cross)
    torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5)
    # gradient == b(t) * g with b(t) = 0.1 sqrt((1 - a_t) / a_t)
    at = float(a[ts.t])
    torch.testing.assert_close(g, 0.1 * math.sqrt((1 - at) / at) * unscaled, rtol=1e-4, atol=1e-5)
    assert terms["b_t"] == pytest.approx(0.1 * math.sqrt((1 - at) / at))
    expected_calls = (4 if ts.two_step else 3) + (0 if approx else 1)
    assert terms["unet_calls"] == expected_calls == fake.calls
    assert terms["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert terms["self_norm"] > 0 and terms["cross_norm"] > 0


def test_guided_and_conditional_cross_terms_differ():
    a = sd_alphas()
    z, mn, my, es = world(1)
    g1, _ = sctd_grad(z, TS_TWO, a, FakeGuidedEps(a, mn, my), es, SCTDParams(cross_term="guided"))
    g2, _ = sctd_grad(z, TS_TWO, a, FakeGuidedEps(a, mn, my), es, SCTDParams(cross_term="conditional"))
    assert not torch.allclose(g1, g2)
    with pytest.raises(ValueError, match="cross_term"):
        sctd_grad(z, TS_TWO, a, FakeGuidedEps(a, mn, my), es, SCTDParams(cross_term="paper"))


def test_exact_inversion_without_guidance_gives_zero():
    # x-independent null prediction -> DDIM inversion is exact; omega = 0 -> e_w = e_null: A = B = z_sm
    a = sd_alphas()
    z, mn, my, es = world(2)
    const = torch.randn(1, 4, 1, 1)
    fake = FakeGuidedEps(a, mn, my, omega=0.0, const_null=const)
    g, terms = sctd_grad(z, TS_TWO, a, fake, es, SCTDParams(guidance_scale=0.0))
    assert float(g.abs().max()) < 1e-5
    assert terms["self_norm"] < 1e-4 and terms["cross_norm"] < 1e-4


def _cos(u, v):
    return float((u.flatten() @ v.flatten()) / (u.norm() * v.norm()))


@pytest.mark.parametrize("name", ["sctd", "gcs", "sds", "ism"])
def test_descent_moves_toward_the_prompt(name):
    # on Gaussian data, -g must point from the unconditional mean toward the prompt's mean
    a = sd_alphas()
    z, mn, my, es = world(3)
    ts = TS_TWO if name != "ism" else TimestepSample(t=600, s=0, s_m=0, two_step=False)
    params = {"sds": SDSParams(), "ism": ISMParams()}.get(name, SCTDParams())
    g, _ = METHODS[name].grad(z, ts, a, FakeGuidedEps(a, mn, my), es, params)
    assert _cos(-g, (my - mn).expand_as(z)) > 0.3


def test_cds_is_the_self_term_only():
    a = sd_alphas()
    z, mn, my, es = world(4)
    g, terms = cds_grad(z, TS_TWO, a, FakeGuidedEps(a, mn, my), es, SCTDParams())
    want, _ = reference_sctd(z, TS_TWO, a, FakeGuidedEps(a, mn, my), es, 7.5, 0.1, use_cross=False)
    torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5)
    assert terms["cross_norm"] == 0.0 and terms["unet_calls"] == 4   # two-step path


def test_gcs_equals_sctd_on_same_timesteps_and_uses_one_segment():
    a = sd_alphas()
    z, mn, my, es = world(5)
    g1, _ = gcs_grad(z, TS_ONE, a, FakeGuidedEps(a, mn, my), es, SCTDParams())
    g2, _ = sctd_grad(z, TS_ONE, a, FakeGuidedEps(a, mn, my), es, SCTDParams())
    torch.testing.assert_close(g1, g2)
    sch = make_schedule(5, "uniform", TimestepParams())
    gen = torch.Generator().manual_seed(0)
    for it in (0, 3000):
        for _ in range(50):
            assert get_method("gcs").sample(it, sch, gen).s_m == 19
            assert get_method("cds").sample(it, sch, gen).s_m == 19
            assert get_method("sctd").sample(it, sch, gen).s_m in segment_edges(5)[:-1]


def test_sds_formula():
    a = sd_alphas()
    z, mn, my, _ = world(6)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(9))
    ts = TimestepSample(t=500, s=0, s_m=0, two_step=False)
    fake = FakeGuidedEps(a, mn, my)
    g, terms = sds_grad(z, ts, a, fake, noise, SDSParams(baseline_lambda=1.0))
    at = float(a[500])
    x_t = math.sqrt(at) * z + math.sqrt(1 - at) * noise
    e_w, _ = FakeGuidedEps(a, mn, my).guided(x_t, 500)
    torch.testing.assert_close(g, (1 - at) * (e_w - noise), rtol=1e-5, atol=1e-6)
    assert terms["unet_calls"] == 1 == fake.calls


def test_ism_formula():
    a = sd_alphas()
    z, mn, my, es = world(7)
    p = ISMParams(ism_delta_t=50, ism_delta_s=200, baseline_lambda=1.0)
    ts = TimestepSample(t=550, s=0, s_m=0, two_step=False)
    fake = FakeGuidedEps(a, mn, my)
    g, terms = ism_grad(z, ts, a, fake, es, p)
    # reference: clean -> 199 -> 399 -> 500 with null, then 500 -> 550, target eps(x_500, 500, null)
    ref = FakeGuidedEps(a, mn, my)
    x = ddim(z, 1.0, float(a[199]), ref.null(z, 0))
    x = ddim(x, float(a[199]), float(a[399]), ref.null(x, 199))
    x = ddim(x, float(a[399]), float(a[500]), ref.null(x, 399))
    e_s = ref.null(x, 500)
    x_t = ddim(x, float(a[500]), float(a[550]), e_s)
    e_w, _ = ref.guided(x_t, 550)
    at = float(a[550])
    torch.testing.assert_close(g, math.sqrt((1 - at) / at) * (e_w - e_s), rtol=1e-4, atol=1e-5)
    assert terms["unet_calls"] == 5 == fake.calls


def test_latent_grad_loss_gradient_is_g():
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    loss = latent_grad_loss(z * 1.0, g) + (z ** 2).sum()
    loss.backward()
    torch.testing.assert_close(z.grad, g + 2 * z.detach())
    with pytest.raises(ValueError, match="shape"):
        latent_grad_loss(z, torch.zeros(1, 4, 3, 3))


def test_latent_grad_loss_through_an_encoder():
    rgb = torch.rand(1, 3, 4, 4, requires_grad=True)
    w = torch.randn(4, 3, 1, 1)
    z = torch.nn.functional.conv2d(rgb, w)
    g = torch.randn_like(z)
    latent_grad_loss(z, g).backward()
    want = torch.einsum("bchw,cd->bdhw", g, w[:, :, 0, 0])
    torch.testing.assert_close(rgb.grad, want)


def test_eps_star_is_randn_plus_channel_offset():
    gen = torch.Generator().manual_seed(3)
    es = make_eps_star((2, 4, 5, 5), 0.1, gen)
    gen2 = torch.Generator().manual_seed(3)
    base = torch.randn(2, 4, 5, 5, generator=gen2)
    chan = torch.randn(1, 4, 1, 1, generator=gen2)
    torch.testing.assert_close(es, base + 0.1 * chan)


def test_bad_inputs_are_named():
    a = sd_alphas()
    z, mn, my, es = world(8)
    with pytest.raises(ValueError, match="eps_star"):
        sctd_grad(z, TS_TWO, a, FakeGuidedEps(a, mn, my), es[:1], SCTDParams())
    with pytest.raises(ValueError, match="t=1000"):
        sctd_grad(z, TimestepSample(1000, 10, 5, True), a, FakeGuidedEps(a, mn, my), es, SCTDParams())
    with pytest.raises(ValueError, match="unknown distillation method 'sdss'"):
        get_method("sdss")
