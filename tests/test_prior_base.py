"""View suffixes, the embedding cache, and CFG / Perp-Neg guidance over one batched prior call."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from common.config import PriorConfig
from stages.priors.guidance import (
    PerpNegParams,
    combine_guided,
    make_guided_eps,
    make_guided_eps_from_config,
    perp_neg_view,
    perpendicular_component,
)
from stages.priors.protocol import EmbeddingCache
from stages.priors.registry import load_prior
from stages.view_words import view_direction, view_suffix


class FakePrior:
    """Test double: prompt -> fixed random vector; eps is a nonlinear function of (z, t, emb)."""

    name = "fake"
    device = torch.device("cpu")
    dtype = torch.float32
    alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
    latent_shape = (2, 3, 3)
    image_size = 3
    max_prompt_tokens = 77

    def __init__(self) -> None:
        self.eps_calls: list[int] = []
        self.cache = EmbeddingCache(self._embed)

    def _embed(self, prompts):
        out = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
            out.append(torch.randn(4, 6, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out)

    def embed(self, prompts):
        return self.cache(prompts)

    def eps(self, z_t, t, emb):
        self.eps_calls.append(z_t.shape[0])
        w = emb.mean(dim=1)  # (B, 6)
        a = w[:, :2].view(-1, 2, 1, 1)
        b = w[:, 2:4].view(-1, 2, 1, 1)
        return torch.tanh(z_t * a + b) + t.float().view(-1, 1, 1, 1) / 1000.0

    def count_tokens(self, prompt):
        return len(prompt.split()) + 2


@pytest.mark.parametrize("az,expected", [(0, "front"), (29.9, "front"), (-29.9, "front"), (30.1, "side"),
                                         (-90, "side"), (149.9, "side"), (150.1, "back"), (-180, "back"),
                                         (180, "back"), (359, "front"), (-200, "back"), (-240, "side")])
def test_view_direction_default_angles(az, expected):
    assert view_direction(az, 60.0, 60.0) == expected
    assert view_suffix(az) == f", {expected} view"


def test_view_direction_angles_are_parameters():
    assert view_direction(40.0, front_angle_deg=90.0) == "front"
    assert view_direction(40.0, front_angle_deg=60.0) == "side"
    assert view_direction(130.0, back_angle_deg=120.0) == "back"


def test_embedding_cache_counts_hits_and_computes_once():
    calls = []

    def compute(ps):
        calls.append(list(ps))
        return torch.stack([torch.full((2,), float(len(p))) for p in ps])

    c = EmbeddingCache(compute)
    e1 = c(["ab", "abc", "ab"])
    assert calls == [["ab", "abc"]] and c.misses == 2 and c.hits == 0
    e2 = c(["abc", "ab"])
    assert calls == [["ab", "abc"]] and c.hits == 2
    assert torch.equal(e2[0], e1[1]) and torch.equal(e2[1], e1[0])
    with pytest.raises(TypeError, match="list of prompts"):
        c("ab")


def test_cfg_is_one_batched_call_and_matches_formula():
    prior = FakePrior()
    az = [0.0, 90.0, 180.0]
    ge = make_guided_eps(prior, "a red cube", az, negative_prompt="blurry", guidance_scale=7.5)
    x = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    prior.eps_calls.clear()
    e_w, e_c = ge.guided(x, 400)
    assert prior.eps_calls == [6]  # cond + neg in ONE call of 2B
    t = torch.full((3,), 400)
    cond = prior.embed(["a red cube, front view", "a red cube, side view", "a red cube, back view"])
    neg = prior.embed(["blurry"] * 3)
    e_y = prior.eps(x, t, cond)
    e_n = prior.eps(x, t, neg)
    torch.testing.assert_close(e_c, e_y)
    torch.testing.assert_close(e_w, e_n + 7.5 * (e_y - e_n))
    null = ge.null(x, 400)
    torch.testing.assert_close(null, prior.eps(x, t, prior.embed([""] * 3)))


def test_cfg_without_view_suffix_uses_plain_prompt():
    prior = FakePrior()
    ge = make_guided_eps(prior, "a red cube", [0.0, 120.0], view_dependent=False)
    torch.testing.assert_close(ge.emb[:2], prior.embed(["a red cube"] * 2))


def test_perpendicular_component():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    p = perpendicular_component(x, y)
    dots = (p * y).flatten(1).sum(1)
    assert dots.abs().max() < 1e-5
    # the removed part is parallel to y
    rest = (x - p).flatten(1)
    cos = torch.nn.functional.cosine_similarity(rest, y.flatten(1)).abs()
    torch.testing.assert_close(cos, torch.ones(4))


@pytest.mark.parametrize("az,r,neg,w", [
    (0.0, 1.0, ("front", "side"), (0.0, -2.0)),
    (45.0, 0.5, ("front", "side"), (-2 * math.exp(-0.5 * 2), -2 * math.exp(-0.5 * 10))),
    (-45.0, 0.5, ("front", "side"), (-2 * math.exp(-0.5 * 2), -2 * math.exp(-0.5 * 10))),
    (90.0, 1.0, ("side", "front"), (0.0, -2.0)),
    (135.0, 0.5, ("side", "front"), (-2 * math.exp(-0.5 * 10) / 2, -2.0)),
    (180.0, 0.0, ("side", "front"), (-1.0, -2.0)),
])
def test_perp_neg_weights(az, r, neg, w):
    start, end, rr, n, ww = perp_neg_view(az, PerpNegParams())
    assert rr == pytest.approx(r)
    assert n == neg
    assert ww == pytest.approx(w)
    assert (start, end) == (("front", "side") if abs(az) < 90 else ("side", "back"))


def test_perp_neg_matches_reference_loop():
    """Against a per-view loop written from stable-dreamfusion's aggregator (separate calls)."""
    prior = FakePrior()
    az = [10.0, 60.0, 120.0, -170.0]
    pn = PerpNegParams()
    ge = make_guided_eps(prior, "a blue cone", az, negative_prompt="", guidance_scale=5.0, perp_neg=pn)
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    prior.eps_calls.clear()
    e_w, e_c = ge.guided(x, 300)
    assert prior.eps_calls == [16]  # 4B: cond, neg, two perpendicular negatives
    views = dict(zip(("front", "side", "back"),
                     prior.embed([f"a blue cone, {d} view" for d in ("front", "side", "back")])))
    t1 = torch.tensor([300])
    for i, a in enumerate(az):
        start, end, r, (n1, n2), (w1, w2) = perp_neg_view(a, pn)
        xi = x[i:i + 1]
        pos = r * views[start] + (1 - r) * views[end]
        e_u = prior.eps(xi, t1, prior.embed([""]))
        e_p = prior.eps(xi, t1, pos[None])
        d_p = (e_p - e_u).flatten()
        acc = d_p.clone()
        for nk, wk in ((n1, w1), (n2, w2)):
            d_k = (prior.eps(xi, t1, views[nk][None]) - e_u).flatten()
            acc += wk * (d_k - torch.dot(d_k, d_p) / torch.dot(d_p, d_p) * d_p)
        ref = e_u.flatten() + 5.0 * acc
        torch.testing.assert_close(e_w[i].flatten(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(e_c[i], e_p[0])


def test_combine_guided_zero_weights_is_cfg():
    g = torch.Generator().manual_seed(3)
    preds = torch.randn(8, 2, 3, 3, generator=g)
    e_w, e_c = combine_guided(preds, 2, 7.5, torch.zeros(2, 2))
    torch.testing.assert_close(e_w, preds[2:4] + 7.5 * (preds[:2] - preds[2:4]))
    with pytest.raises(ValueError, match="weights"):
        combine_guided(preds, 2, 7.5, torch.zeros(2, 1))


def test_guided_from_config_and_bad_inputs():
    prior = FakePrior()
    cfg = PriorConfig(perp_neg=True, guidance_scale=3.0)
    ge = make_guided_eps_from_config(prior, cfg, "a cube", [0.0, 100.0])
    assert ge.emb.shape[0] == 8 and ge.guidance_scale == 3.0
    with pytest.raises(ValueError, match="batch"):
        ge.guided(torch.zeros(3, 2, 3, 3), 10)
    with pytest.raises(ValueError, match="azimuth"):
        make_guided_eps(prior, "a cube", [])
    with pytest.raises(ValueError, match="prompt"):
        make_guided_eps(prior, "  ", [0.0])


def test_load_prior_unknown_name():
    cfg = PriorConfig()
    cfg.name = "dalle"
    with pytest.raises(ValueError, match="dalle"):
        load_prior(cfg, "cpu")
