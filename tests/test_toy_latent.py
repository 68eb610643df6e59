"""Latent toy SD (issue 4, inexact-inversion lead): a few-step training run at tiny sizes, loaded
through the production SD loader as a latent prior (VAE encode with gradient, decode), with the
VAE's scaling_factor applied exactly as for SD 2.1; same seed -> identical weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from stages.priors.stable_diffusion import StableDiffusionPrior
from stages.toyworld.prior_training.common import TrainParams
from stages.toyworld.prior_training.latent import VaeParams, build_vae, latent_scaling_factor, train

RES = 16


def _params() -> tuple[TrainParams, VaeParams]:
    p = TrainParams(batch_size=4, num_views=2, resolution=RES, block_out_channels=(8, 16), text_hidden=16,
                    text_layers=1, max_tokens=24, warmup=1, checkpoint_every=2)
    return p, VaeParams(batch_size=4, block_out_channels=(8, 16, 16), warmup=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    runs = []
    for name in ("a", "b"):
        p, vp = _params()
        runs.append(train(root / name, steps=3, vae_steps=2, seed=1, params=p, vae_params=vp,
                          cache_dir=str(root / "cache")))
    return root, runs


def _weights(d, sub: str) -> dict[str, torch.Tensor]:
    return load_file(str(d / sub / "diffusion_pytorch_model.safetensors"))


def test_same_seed_gives_identical_weights(trained):
    root, (ia, ib) = trained
    for sub in ("unet", "vae"):
        wa, wb = _weights(root / "a", sub), _weights(root / "b", sub)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), sub
    assert ia["scaling_factor"] == ib["scaling_factor"]
    assert ia["steps"] == 3 and ia["vae_steps"] == 2 and ia["latent_shape"] == [4, RES // 4, RES // 4]


def test_output_is_a_diffusers_dir_with_a_vae(trained):
    root, (info, _) = trained
    index = json.loads((root / "a" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["unet"][1] == "UNet2DConditionModel"
    vcfg = json.loads((root / "a" / "vae" / "config.json").read_text())
    assert vcfg["scaling_factor"] == pytest.approx(info["scaling_factor"]) and vcfg["scaling_factor"] != 0.18215
    assert json.loads((root / "a" / "train_info.json").read_text())["scaling_factor"] == info["scaling_factor"]


def test_production_loader_encodes_with_gradient_and_scaling(trained):
    root, (info, _) = trained
    prior = StableDiffusionPrior.from_pretrained(str(root / "a"), "cpu", "fp32", image_size=RES, name="toy_sd")
    assert prior.vae is not None and prior.vae_scale_factor == 4
    assert prior.latent_shape == (4, RES // 4, RES // 4)
    assert prior.scaling_factor == pytest.approx(info["scaling_factor"])
    rgb = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(0), requires_grad=True)
    z = prior.encode(rgb, generator=torch.Generator().manual_seed(5))
    assert z.shape == (2, 4, RES // 4, RES // 4)
    # the loader's scaling = VAE posterior sample (same noise) x scaling_factor, computed here directly
    with torch.no_grad():
        ref = prior.vae.encode(2 * rgb - 1).latent_dist.sample(generator=torch.Generator().manual_seed(5))
    assert torch.allclose(z.detach(), ref * info["scaling_factor"], atol=1e-5)
    z.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    img = prior.decode(z.detach())
    assert img.shape == (2, 3, RES, RES) and img.min() >= 0 and img.max() <= 1
    with torch.no_grad():
        ref_img = ((prior.vae.decode(z.detach() / info["scaling_factor"]).sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(img, ref_img, atol=1e-5)
    e = prior.eps(z.detach(), torch.tensor([10, 900]), prior.embed(["a red cube, side view", ""]))
    assert e.shape == z.shape and torch.isfinite(e).all()


def test_config_route_loads_the_latent_dir(trained):
    """prior.name=toy_sd + prior.model=<dir>: how the benchmarks select this prior."""
    from common.config import PriorConfig
    from stages.priors.registry import load_prior

    root, _ = trained
    prior = load_prior(PriorConfig(name="toy_sd", model=str(root / "a"), image_size=RES, device="cpu",
                                   dtype="fp32"))
    assert prior.vae is not None and prior.latent_shape == (4, RES // 4, RES // 4)


def test_scaling_factor_is_one_over_latent_std():
    x = 3.0 * torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    assert latent_scaling_factor(x) == pytest.approx(1.0 / float(x.double().std()), rel=1e-9)
    with pytest.raises(ValueError, match="std"):
        latent_scaling_factor(torch.zeros(4, 4, 2, 2))


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="vae_steps=0"):
        train(tmp_path / "x", steps=2, vae_steps=0)
    with pytest.raises(ValueError, match="resolution=30"):
        build_vae(VaeParams(), 30)
    with pytest.raises(ValueError, match="norm_num_groups"):
        build_vae(VaeParams(block_out_channels=(12, 16)), 32)


def test_vae_is_stored_in_fp16_and_loaded_as_fp32(trained):
    """VaeParams.save_dtype defaults to fp16 (the shipped toy SD); the loader computes in fp32 on the
    stored values exactly."""
    root, _ = trained
    stored = _weights(root / "a", "vae")
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert {v.dtype for v in _weights(root / "a", "unet").values()} == {torch.float32}  # TrainParams default
    prior = StableDiffusionPrior.from_pretrained(str(root / "a"), "cpu", "fp32", image_size=RES, name="toy_sd")
    loaded = prior.vae.state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.float()) for k, v in stored.items())


def test_unet_save_dtype_fp16_and_bad_save_dtype(tmp_path):
    p, vp = _params()
    p.save_dtype = "fp16"
    train(tmp_path / "h", steps=1, vae_steps=1, seed=0, params=p, vae_params=vp, cache_dir=str(tmp_path / "c"))
    assert {v.dtype for v in _weights(tmp_path / "h", "unet").values()} == {torch.float16}
    p.save_dtype = "int8"
    with pytest.raises(ValueError, match="save_dtype='int8'"):
        train(tmp_path / "x", steps=1, vae_steps=1, seed=0, params=p, vae_params=vp, cache_dir=str(tmp_path / "c"))
    assert not (tmp_path / "x" / "unet").exists()  # refused before training, nothing half-written
    p2, vp2 = _params()
    vp2.save_dtype = "fp8"
    with pytest.raises(ValueError, match="save_dtype='fp8'"):
        train(tmp_path / "y", steps=1, vae_steps=1, seed=0, params=p2, vae_params=vp2, cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize("recipe", ["latent", "pixel"])
def test_cli_train_prior_recipes(tmp_path, recipe):
    """`sctd3d toy train-prior` trains the latent toy SD (the shipped default) unless `--recipe pixel`."""
    from pipeline.cli import main

    out = tmp_path / "out"
    args = ["toy", "train-prior", "--out", str(out), "--steps", "1", "--num-views", "1", "--batch-size", "2",
            "--cache-dir", str(tmp_path / "c")]
    args += ["--vae-steps", "1"] if recipe == "latent" else ["--recipe", "pixel", "--resolution", "16"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 1 and (out / "vae").is_dir() == (recipe == "latent")
    assert info.get("latent", False) == (recipe == "latent")
    if recipe == "latent":
        assert {v.dtype for v in _weights(out, "unet").values()} == {torch.float16}
        assert info["params"]["block_out_channels"] == [32, 64, 128]
