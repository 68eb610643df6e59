"""Toy SD: both shipped models (latent `toy`, the default; pixel `toy_pixel`) load offline through the
production SD loader and answer the catalogue's prompts; the training command runs (a few tiny steps)."""

from __future__ import annotations

import json

import pytest
import torch

from stages.priors.stable_diffusion import TOY_SD_DIR, TOY_SD_PIXEL_DIR, StableDiffusionPrior, toy_sd_model
from stages.toyworld.catalogue import load_catalogue
from stages.priors.sampling import sample
from stages.toyworld.prior_training.common import TrainParams, nearest_object
from stages.toyworld.prior_training.pixel import train
from stages.toyworld.views import ViewParams, catalogue_views



def test_shipped_toy_sd_weights_are_in_the_package():
    """The toy world's priors are part of the product: missing weights are a failure, not a skip."""
    for d in (TOY_SD_DIR, TOY_SD_PIXEL_DIR):
        assert (d / "unet" / "diffusion_pytorch_model.safetensors").is_file(), f"{d}: shipped UNet weights missing"
        assert (d / "text_encoder").is_dir(), f"{d}: shipped text encoder missing"


def _load(model: str):
    from common.config import PriorConfig
    from stages.priors.registry import load_prior

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_prior(PriorConfig(name="toy_sd", model=model, image_size=32, device="cpu", dtype="fp32"))


@pytest.fixture(scope="module")
def toy_prior():
    """The default toy SD (prior.model=toy: latent)."""
    return _load("toy")


@pytest.fixture(scope="module")
def toy_pixel_prior():
    return _load("toy_pixel")


def test_toy_model_names_resolve_and_bad_names_are_named(tmp_path):
    from stages.priors.stable_diffusion import DEFAULT_MODEL

    assert toy_sd_model("toy") == toy_sd_model("") == toy_sd_model(DEFAULT_MODEL) == str(TOY_SD_DIR)
    assert toy_sd_model("toy_pixel") == str(TOY_SD_PIXEL_DIR)
    assert toy_sd_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="'toy_latent'.*toy, toy_pixel"):
        toy_sd_model("toy_latent")
    with pytest.raises(ValueError, match="no/such/dir"):
        toy_sd_model(str(tmp_path / "no" / "such" / "dir"))


@pytest.mark.parametrize("root,vae", [(TOY_SD_DIR, True), (TOY_SD_PIXEL_DIR, False)], ids=["latent", "pixel"])
def test_shipped_toy_sd_is_a_small_standard_diffusers_dir(root, vae):
    index = json.loads((root / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert (index.get("vae") == ["diffusers", "AutoencoderKL"]) == vae and (root / "vae").is_dir() == vae
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_schedule"], sched["beta_start"], sched["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 12e6  # a few MB each: latent 10.1 MB (fp16 UNet + VAE), pixel 4.4 MB
    assert not list(root.rglob("*.bin")) and not list(root.rglob("*.pt"))


def test_loads_offline_through_the_production_loader(toy_prior, toy_pixel_prior):
    assert toy_pixel_prior.vae is None and toy_pixel_prior.latent_shape == (3, 32, 32)
    p = toy_prior
    assert isinstance(p, StableDiffusionPrior) and p.name == "toy_sd" and p.vae is not None
    assert p.latent_shape == (4, 8, 8)
    info = json.loads((TOY_SD_DIR / "train_info.json").read_text())
    assert p.scaling_factor == pytest.approx(info["scaling_factor"])
    # stored in fp16, computed in fp32
    assert {q.dtype for q in p.unet.parameters()} == {q.dtype for q in p.vae.parameters()} == {torch.float32}
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(p.alphas_cumprod, torch.cumprod(1 - betas, 0).float(), atol=1e-6)
    emb = p.embed(["a red cube, front view", "", "a red cube"])
    assert emb.shape[0] == 3 and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])
    x = torch.randn(3, *p.latent_shape, generator=torch.Generator().manual_seed(0))
    e = p.eps(x, torch.tensor([500, 500, 500]), emb)
    assert e.shape == x.shape and torch.isfinite(e).all()
    assert p.count_tokens("a red cube, front view") <= p.max_prompt_tokens


def _own_object_rate(prior) -> tuple[torch.Tensor, list[str]]:
    """8 samples per catalogue prompt (20 DDIM steps, CFG 5) -> (per-prompt own-object rate, names)."""
    cat = load_catalogue()
    gt = catalogue_views(ViewParams(num_views=32, resolution=32), cat)
    prompts = [o.prompt + ", front view" for o in cat.objects for _ in range(8)]
    imgs = sample(prior, prompts, steps=20, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    pred = nearest_object(imgs, gt).reshape(len(cat.objects), 8)
    own = pred == torch.arange(len(cat.objects))[:, None]
    print(f"{int(own.sum())}/{own.numel()} samples nearest their own object; "
          f"{int((own.float().mean(1) >= 0.75).sum())}/{len(cat.objects)} prompts with >= 6/8")
    return own.float().mean(1), cat.names()


def test_samples_look_like_the_prompts_own_object(toy_prior):
    """Issue 3's goal, met by the default (latent) toy SD: >= 90% of 8 samples per catalogue prompt
    have the prompt's own object nearest (32 ground-truth views per object; chance 1/21 = 4.8%).
    Measured on 2026-11-25: 154/168 = 91.7%, 20/21 prompts with >= 6/8 (5000 UNet steps; 2500 steps
    gave 89%). The goal leaves a margin of 2 samples: a worse prior fails."""
    per_prompt, names = _own_object_rate(toy_prior)
    assert float(per_prompt.mean()) >= 0.90, dict(zip(names, per_prompt.tolist()))
    assert int((per_prompt >= 0.75).sum()) >= 19, dict(zip(names, per_prompt.tolist()))


def test_pixel_toy_sd_answers_the_prompts_at_its_measured_level(toy_pixel_prior):
    """The pixel toy SD (3000 steps) does NOT reach the goal: measured 117/168 = 70% (12/21 prompts
    >= 6/8). Kept shipped because every earlier toy-SD measurement used it; this floor catches a
    broken copy."""
    per_prompt, names = _own_object_rate(toy_pixel_prior)
    assert float(per_prompt.mean()) >= 0.60, dict(zip(names, per_prompt.tolist()))


def test_training_command_runs_and_is_reproducible(tmp_path):
    p = dict(batch_size=4, num_views=2, resolution=16, block_out_channels=(8, 16), text_hidden=16,
             text_layers=1, max_tokens=24, warmup=1, checkpoint_every=1)
    info = train(tmp_path / "a", steps=2, seed=1, params=TrainParams(**p), cache_dir=str(tmp_path / "c"))
    train(tmp_path / "b", steps=2, seed=1, params=TrainParams(**p), cache_dir=str(tmp_path / "c"))
    assert info["steps"] == 2 and info["final_loss_avg100"] > 0
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    prior = StableDiffusionPrior.from_pretrained(str(tmp_path / "a"), "cpu", "fp32", image_size=16, name="toy_sd")
    tok = prior.tokenizer.tokenize("a red cube, side view")
    assert tok == ["a</w>", "red</w>", "cube</w>", ",</w>", "side</w>", "view</w>"]
    e = prior.eps(torch.zeros(2, 3, 16, 16), torch.tensor([10, 900]), prior.embed(["a red cube", ""]))
    assert e.shape == (2, 3, 16, 16) and torch.isfinite(e).all()
    with pytest.raises(ValueError, match="steps"):
        train(tmp_path / "c2", steps=0)
