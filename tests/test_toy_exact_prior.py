"""Exact toy prior: Bayes-optimal denoiser over cached views (small views to stay CI-sized)."""

from __future__ import annotations

import pytest
import torch

from kernels.ddim import ddim_step
from stages.priors.protocol import Prior
from stages.priors.toy_exact import NULL, ToyExactPrior, sd_alphas_cumprod
from stages.toyworld import views as views_mod
from stages.toyworld.catalogue import CatalogueError
from stages.toyworld.views import ViewParams

NAMES = ["red_cube", "blue_sphere", "green_cone", "yellow_torus"]
VP = ViewParams(num_views=12, resolution=16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toycache")


@pytest.fixture(scope="module")
def prior(cache):
    return ToyExactPrior(views=VP, cache_dir=str(cache), names=NAMES)


def _views(prior, name):
    return prior._x[prior.object_names.index(name)].float().reshape(-1, 3, 16, 16)


def test_protocol_and_schedule(prior):
    assert isinstance(prior, Prior)
    a = prior.alphas_cumprod
    assert a.shape == (1000,) and a.dtype == torch.float32
    assert abs(float(a[0]) - (1 - 0.00085)) < 1e-6 and abs(float(a[-1]) - 0.0047) < 2e-4  # SD 2.1 values
    assert prior.latent_shape == (3, 16, 16) and prior.image_size == 16
    rgb = torch.rand(2, 3, 16, 16, requires_grad=True)
    z = prior.encode(rgb)
    z.sum().backward()
    assert torch.allclose(rgb.grad, torch.full_like(rgb, 2.0))
    assert torch.allclose(prior.decode(z.detach()), rgb.detach(), atol=1e-6)


def test_embed_indices_null_suffix_and_cache(prior):
    e = prior.embed(["a red cube", "", "a blue sphere, back view", "blurry, low quality"])
    assert e.tolist() == [0, NULL, 1, NULL]
    prior.embed(["a red cube"])
    assert prior.cache_stats["hits"] >= 1
    strict = ToyExactPrior.__new__(ToyExactPrior)
    strict.__dict__.update(prior.__dict__)
    strict.negative_unknown = "error"
    strict._cache = type(prior._cache)(strict._embed_uncached)
    with pytest.raises(CatalogueError, match="purple"):
        strict.embed(["a purple dog"])


def test_ddim_from_noise_lands_on_a_training_view(prior):
    a = prior.alphas_cumprod.double()
    ts = torch.linspace(999, 0, 26).round().long().tolist()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 16, 16, generator=g)
    emb = prior.embed(["a green cone"] * 3)
    for t_from, t_to in zip(ts[:-1], ts[1:]):
        e = prior.eps(x, torch.full((3,), t_from), emb)
        x = ddim_step(x, a[t_from].float(), a[t_to].float(), e)
    x0 = prior.x0_hat(x, torch.zeros(3, dtype=torch.long), emb).float()  # final clean estimate
    views = _views(prior, "green_cone")
    rmse = ((x0[:, None] - views[None]) ** 2).mean(dim=(2, 3, 4)).sqrt().min(dim=1).values
    assert bool((rmse < 1e-4).all()), rmse
    other = _views(prior, "red_cube")
    assert float(((x0[:, None] - other[None]) ** 2).mean(dim=(2, 3, 4)).sqrt().min()) > 0.1


def test_eps_of_noised_training_view_at_small_t_is_the_noise(prior):
    x0 = _views(prior, "blue_sphere")[:4]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 20)
    a = prior.alphas_cumprod[20]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    for emb in (prior.embed(["a blue sphere"] * 4), torch.full((4,), NULL)):
        e = prior.eps(xt, t, emb)
        assert float((e - noise).abs().max()) < 1e-3


def test_cond_and_null_differ_and_batch_equals_separate(prior):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([700, 700])
    cond = prior.eps(x, t, prior.embed(["a red cube"] * 2))
    null = prior.eps(x, t, torch.full((2,), NULL))
    assert float((cond - null).abs().mean()) > 1e-2
    both = prior.eps(torch.cat([x, x]), torch.cat([t, t]), torch.cat([prior.embed(["a red cube"] * 2),
                                                                         torch.full((2,), NULL)]))
    assert torch.allclose(both, torch.cat([cond, null]), atol=1e-6)


@pytest.mark.parametrize("t", [1, 999])
def test_no_nan_at_extreme_timesteps(prior, t):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(t)) * 3
    e = prior.eps(x, torch.full((3,), t), torch.tensor([0, NULL, 3]))
    assert torch.isfinite(e).all()


def test_bad_inputs(prior):
    with pytest.raises(ValueError, match="embeddings"):
        prior.eps(torch.zeros(2, 3, 16, 16), torch.tensor([5, 5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="object index"):
        prior.eps(torch.zeros(1, 3, 16, 16), torch.tensor([5]), torch.tensor([99]))
    with pytest.raises(ValueError, match="shape"):
        prior.eps(torch.zeros(1, 3, 8, 8), torch.tensor([5]), torch.tensor([0]))


def test_second_prior_reuses_the_view_cache(prior, cache, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("re-rendered although cached")

    monkeypatch.setattr(views_mod, "render_views", boom)
    again = ToyExactPrior(views=VP, cache_dir=str(cache), names=NAMES)
    assert all(torch.equal(x, y) for x, y in zip(again._x, prior._x))


def test_load_prior_by_name(cache, monkeypatch):
    from common.config import PriorConfig, ToyConfig
    from stages.priors import toy_exact
    from stages.priors.registry import load_prior

    toy = ToyConfig(views_per_object=2, resolution=8, cache_dir=str(cache))
    p = toy_exact.load(PriorConfig(name="toy_exact", image_size=8), "cpu", toy)
    assert p.latent_shape == (3, 8, 8) and len(p.object_names) >= 16
    assert torch.equal(p.alphas_cumprod, sd_alphas_cumprod())
    seen = {}

    def recording_load(cfg, device, toy=None):  # avoids rendering 256 default views per object
        seen["cfg"] = cfg
        return p

    monkeypatch.setattr(toy_exact, "load", recording_load)
    cfg = PriorConfig(name="toy_exact", image_size=8, device="cpu")
    assert load_prior(cfg) is p and seen["cfg"] is cfg


def test_guided_eps_cfg_and_perp_neg_work_with_integer_embeddings(prior):
    from stages.priors.guidance import PerpNegParams, make_guided_eps

    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    for pn in (None, PerpNegParams()):
        ge = make_guided_eps(prior, "a yellow torus", [0.0, 95.0, -170.0], "", 7.5, pn)
        e_w, e_cond = ge.guided(x, 600)
        assert torch.isfinite(e_w).all() and e_w.shape == x.shape
        assert torch.allclose(e_cond, prior.eps(x, torch.full((3,), 600), torch.full((3,), 3)), atol=1e-6)
        assert torch.allclose(ge.null(x, 600), prior.eps(x, torch.full((3,), 600), torch.full((3,), NULL)))
