"""Generalisation measures (stages/toyworld/generalisation.py): right on ground-truth renders, ~0
novelty for the exact prior (a lookup table), and the toy SD's colours on novel prompts."""

from __future__ import annotations

import pytest
import torch

from stages.priors.sampling import sample

from stages.priors.toy_exact import ToyExactPrior
from stages.toyworld import generalisation as gen
from stages.toyworld.catalogue import load_catalogue
from stages.toyworld.views import ViewParams, catalogue_views

NOVEL = ["a white cube", "a white sphere", "a white cone", "a white torus", "a red cylinder", "a blue cylinder"]
TRAIN_VIEWS = ViewParams(num_views=256, resolution=32)  # the toy SD's training views (TrainParams)


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    cat = load_catalogue()
    views = catalogue_views(TRAIN_VIEWS, cat)
    return cat, gen.catalogue_colours(cat), gen.shape_silhouettes(views, cat), gen.training_set(views)


def _toy_prior(model: str):
    from common.config import PriorConfig
    from stages.priors.registry import load_prior

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_prior(PriorConfig(name="toy_sd", model=model, image_size=32, device="cpu", dtype="fp32"))


@pytest.mark.parametrize("name, colour, shape", [("red_cube", "red", "cube"), ("blue_sphere", "blue", "sphere")])
def test_held_out_renders_are_classified_and_as_novel_as_a_fresh_view(world, name, colour, shape):
    cat, colours, sil, train = world
    imgs = catalogue_views(ViewParams(num_views=16, resolution=32, seed=1), cat, names=[name])[0].chw()
    c, rgb = gen.dominant_colour(imgs, colours)
    s, iou = gen.nearest_shape(imgs, sil)
    assert c == [colour] * 16
    assert torch.allclose(rgb.mean(0), colours[colour], atol=0.15)
    assert sum(x == shape for x in s) >= 15 and float(iou.min()) > 0.7
    nov, owner = gen.novelty(imgs, train)
    assert 0.5 < float(nov.median()) < 2.0  # new cameras: about one training-view spacing away
    own = catalogue_views(TRAIN_VIEWS, cat, names=[name])[0].chw()[:8]
    nov_own, owner_own = gen.novelty(own, train)
    assert float(nov_own.max()) < 1e-6 and (owner_own == cat.names().index(name)).all()


def test_mask_colour_and_prompt_helpers_on_synthetic_images(world):
    _, colours, _, _ = world
    img = torch.zeros(2, 3, 32, 32)
    img[0, :, 8:24, 8:24] = colours["yellow"][:, None, None] * 0.8  # darkened edge-like pixels keep chroma
    m = gen.foreground_mask(img)
    assert int(m[0].sum()) == 256 and not m[1].any()
    c, _ = gen.dominant_colour(img, colours)
    assert c == ["yellow", "none"]
    assert gen.prompt_attributes("a white cube, front view", colours) == ("white", "cube")
    assert gen.prompt_attributes("a red and white striped cube", colours) == (None, "cube")
    assert gen.prompt_attributes("a red mushroom with a white stem", colours) == (None, None)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        gen.foreground_mask(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="resolution"):
        gen.novelty(torch.zeros(1, 3, 16, 16), world[3])


def test_exact_prior_is_a_lookup_table(world):
    """DDIM from the exact prior lands on training views: novelty ~0 (measured 0.00), which the toy
    SD must not show."""
    cat, colours, sil, train = world
    prior = ToyExactPrior(cat, TRAIN_VIEWS, names=["red_cube", "blue_sphere"])
    imgs = sample(prior, ["a red cube, front view"] * 4 + ["a blue sphere, front view"] * 4, steps=20,
                  guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    nov, _ = gen.novelty(imgs, train)
    assert float(nov.max()) < 0.05, nov
    assert gen.dominant_colour(imgs, colours)[0] == ["red"] * 4 + ["blue"] * 4
    assert gen.nearest_shape(imgs, sil)[0] == ["cube"] * 4 + ["sphere"] * 4


# model -> (min colour accuracy, min shape accuracy, min novelty, min median novelty); measured in the comments
NOVEL_FLOORS = {
    "toy": (0.90, 0.40, 0.25, 1.20),        # latent (default), 2026-12-01: 48/48, 27/48 = 0.56, min 0.50, median 1.56
    "toy_pixel": (0.80, 0.20, 0.50, 1.50),  # pixel, 2026-11-25: 45/48 = 0.94, 16/48 = 0.33, min 1.16, median 2.22
}


@pytest.mark.parametrize("model", sorted(NOVEL_FLOORS))
def test_toy_sd_novel_prompts_get_the_colour_and_are_not_copies(world, model):
    """8 samples per novel prompt (white cube/sphere/cone/torus, red/blue cylinder; ", front view",
    CFG 5, 20 DDIM steps, seed 0). Both shipped toy SDs get the new prompt's colour and make images
    that are not copies of a training view (novelty = distance to the nearest training view in units
    of the typical spacing between an object's training views: the exact prior scores 0.00, fresh
    renders of a catalogue object 0.34..2.2, median ~0.9). Shape on novel prompts: latent 0.56 (the
    cylinder word still fails: red/blue cylinders come out as cubes), pixel 0.33 (chance 0.2);
    benchmarks/RESULTS.md "Toy SD generalisation". Floors = measured level minus a margin."""
    _, colours, sil, train = world
    min_colour, min_shape, min_nov, min_median = NOVEL_FLOORS[model]
    imgs = sample(_toy_prior(model), [p + ", front view" for p in NOVEL for _ in range(8)], steps=20,
                  guidance_scale=5.0, generator=torch.Generator().manual_seed(0)).clamp(0, 1)
    want = [gen.prompt_attributes(p, colours) for p in NOVEL for _ in range(8)]
    c, _ = gen.dominant_colour(imgs, colours)
    s, _ = gen.nearest_shape(imgs, sil)
    nov, _ = gen.novelty(imgs, train)
    colour_acc = sum(x == w[0] for x, w in zip(c, want)) / len(c)
    shape_acc = sum(x == w[1] for x, w in zip(s, want)) / len(s)
    print(f"toy SD {model} novel prompts: colour {colour_acc:.3f}, shape {shape_acc:.3f}, "
          f"novelty median {float(nov.median()):.2f} min {float(nov.min()):.2f}")
    assert colour_acc >= min_colour, list(zip(c, want))
    assert shape_acc >= min_shape, list(zip(s, want))
    assert float(nov.min()) > min_nov and float(nov.median()) > min_median, nov
