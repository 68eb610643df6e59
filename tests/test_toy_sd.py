"""Toy SD: loads offline through the production SD loader, answers the catalogue's prompts,
and its training command runs (a few tiny steps)."""

from __future__ import annotations

import json

import pytest
import torch

from stages.priors.stable_diffusion import TOY_SD_DIR, StableDiffusionPrior
from stages.toyworld.catalogue import load_catalogue
from stages.priors.sampling import sample
from stages.toyworld.train_prior import TrainParams, nearest_object, train
from stages.toyworld.views import ViewParams, catalogue_views

SHIPPED = (TOY_SD_DIR / "unet" / "diffusion_pytorch_model.safetensors").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="toy SD weights not trained yet (sctd3d toy train-prior)")


@pytest.fixture(scope="module")
def toy_prior():
    from pipeline.config import PriorConfig
    from stages.priors.base import load_prior

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_prior(PriorConfig(name="toy_sd", image_size=32, device="cpu", dtype="fp32"))


@needs_shipped
def test_shipped_toy_sd_is_a_small_standard_diffusers_dir():
    index = json.loads((TOY_SD_DIR / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    sched = json.loads((TOY_SD_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_schedule"], sched["beta_start"], sched["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    total = sum(f.stat().st_size for f in TOY_SD_DIR.rglob("*") if f.is_file())
    assert total < 20e6
    assert not list(TOY_SD_DIR.rglob("*.bin")) and not list(TOY_SD_DIR.rglob("*.pt"))


@needs_shipped
def test_loads_offline_through_the_production_loader(toy_prior):
    p = toy_prior
    assert isinstance(p, StableDiffusionPrior) and p.name == "toy_sd" and p.vae is None
    assert p.latent_shape == (3, 32, 32)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(p.alphas_cumprod, torch.cumprod(1 - betas, 0).float(), atol=1e-6)
    emb = p.embed(["a red cube, front view", "", "a red cube"])
    assert emb.shape[0] == 3 and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    e = p.eps(x, torch.tensor([500, 500, 500]), emb)
    assert e.shape == x.shape and torch.isfinite(e).all()
    assert p.count_tokens("a red cube, front view") <= p.max_prompt_tokens


@needs_shipped
def test_samples_look_like_the_prompts_own_object(toy_prior):
    """8 samples per catalogue prompt (20 DDIM steps, CFG 5): nearest ground-truth object = own.

    Goal of issue 3: >= 90% of the catalogue. NOT REACHED by the shipped weights (3000 training
    steps, `sctd3d toy train-prior --steps 3000`): measured 117/168 = 70% of samples nearest their
    own object against these 32 views per object (83% against 256 views; chance 1/21 = 4.8%) and
    12/21 prompts with >= 6/8 (1000 steps gave 36% and 1/21). This asserts the measured level as a
    floor so a worse prior fails, not the goal."""
    cat = load_catalogue()
    gt = catalogue_views(ViewParams(num_views=32, resolution=32), cat)
    prompts = [o.prompt + ", front view" for o in cat.objects for _ in range(8)]
    imgs = sample(toy_prior, prompts, steps=20, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    pred = nearest_object(imgs, gt).reshape(len(cat.objects), 8)
    own = pred == torch.arange(len(cat.objects))[:, None]
    per_prompt = own.float().mean(1)
    ok = per_prompt >= 0.75
    print(f"toy SD: {int(own.sum())}/{own.numel()} samples nearest their own object; "
          f"{int(ok.sum())}/{len(ok)} prompts with >= 6/8")
    assert float(own.float().mean()) >= 0.60, dict(zip(cat.names(), per_prompt.tolist()))


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
