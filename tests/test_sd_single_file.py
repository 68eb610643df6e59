"""Single-file (original LDM/CompVis layout) Stable Diffusion loading, offline, on a tiny random SD.

No real checkpoint exists here, so the tiny diffusers SD from conftest is converted to the original
single-file key layout (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`,
the layout of SD 1.x `.safetensors` files and their fine-tunes) by a test-only inverse of diffusers'
converter, then loaded through the production `StableDiffusionPrior.from_pretrained`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import build_tiny_sd
from stages.priors.stable_diffusion import PriorLoadError, StableDiffusionPrior

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    """Rename the leading module of `rest` ("norm1.weight" -> "in_layers.0.weight") by `table`."""
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_to_ldm(sd: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DConditionModel keys -> `model.diffusion_model.*` (inverse of convert_ldm_unet_checkpoint)."""
    n = layers_per_block + 1  # LDM input/output blocks per resolution (down: resnets + downsampler)
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if p[0] in ("down_blocks", "up_blocks"):
            b = int(p[1])
            kind, rest = p[2], ".".join(p[4:])
            if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.* -> input_blocks.k.0.op.*
                new = f"input_blocks.{(b + 1) * n}.0.op.{'.'.join(p[5:])}"
            elif kind == "upsamplers":  # ...upsamplers.0.conv.* after the last resnet (and its attention)
                has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd)
                new = f"output_blocks.{b * n + n - 1}.{2 if has_attn else 1}.{'.'.join(p[4:])}"
            else:
                layer = int(p[3])
                idx = 1 + b * n + layer if p[0] == "down_blocks" else b * n + layer
                blocks = "input_blocks" if p[0] == "down_blocks" else "output_blocks"
                new = (f"{blocks}.{idx}.0.{_rename(rest, _UNET_RESNET)}" if kind == "resnets"
                       else f"{blocks}.{idx}.1.{rest}")
        elif p[0] == "mid_block":  # resnets.0, attentions.0, resnets.1 -> middle_block.0, .1, .2
            rest = ".".join(p[3:])
            new = (f"middle_block.1.{rest}" if p[1] == "attentions"
                   else f"middle_block.{2 * int(p[2])}.{_rename(rest, _UNET_RESNET)}")
        else:
            new = _rename(key, _UNET_TOP)
            assert new != key, f"unmapped UNet key {key}"
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(sd: dict[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL keys -> `first_stage_model.*` (attention projections as 1x1 convs, as in SD)."""
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if p[1] in ("down_blocks", "up_blocks"):
            b = int(p[2]) if p[1] == "down_blocks" else num_up_blocks - 1 - int(p[2])  # LDM decoder counts up
            level = "down" if p[1] == "down_blocks" else "up"
            if p[3] == "resnets":
                new = f"{p[0]}.{level}.{b}.block.{p[4]}.{_rename('.'.join(p[5:]), {'conv_shortcut': 'nin_shortcut'})}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                new = f"{p[0]}.{level}.{b}.{'downsample' if level == 'down' else 'upsample'}.{'.'.join(p[5:])}"
        elif p[1] == "mid_block":
            rest = ".".join(p[4:])
            if p[2] == "resnets":
                new = f"{p[0]}.mid.block_{int(p[3]) + 1}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"
            else:
                new = f"{p[0]}.mid.attn_1.{_rename(rest, _VAE_ATTN)}"
                if value.ndim == 2:
                    value = value[:, :, None, None]
        else:
            new = _rename(key, {f"{p[0]}.conv_norm_out": f"{p[0]}.norm_out"})
        out["first_stage_model." + new] = value
    return out


def write_single_file(diffusers_dir: Path, out: Path) -> Path:
    """The three diffusers state dicts of `diffusers_dir` as one original-layout .safetensors file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    unet = UNet2DConditionModel.from_pretrained(diffusers_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(diffusers_dir, subfolder="vae")
    te = CLIPTextModel.from_pretrained(diffusers_dir, subfolder="text_encoder")
    sd = unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)
    sd |= vae_to_ldm(vae.state_dict(), len(vae.config.up_block_types))
    # the original files hold transformers 4's CLIPTextModel keys (`text_model.` first); transformers
    # 5 names the same tensors without that prefix
    sd |= {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
           for k, v in te.state_dict().items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out))
    return out


def config_only_copy(diffusers_dir: Path, out: Path) -> Path:
    """The diffusers dir without any weight file: the loaded weights can only come from the single file."""
    shutil.copytree(diffusers_dir, out, ignore=lambda _d, names: [n for n in names if n.endswith(_WEIGHT_SUFFIXES)])
    assert not [f for f in out.rglob("*") if f.name.endswith(_WEIGHT_SUFFIXES)]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(diffusers dir, config-only dir, single .safetensors file) of one tiny random SD."""
    root = tmp_path_factory.mktemp("sd_single")
    model = build_tiny_sd(root / "diffusers", with_vae=True, seed=3)
    return model, config_only_copy(model, root / "configs"), write_single_file(model, root / "tiny_sd.safetensors")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _assert_same_weights(loaded: torch.nn.Module, reference: torch.nn.Module, what: str) -> None:
    a, b = loaded.state_dict(), reference.state_dict()
    assert a.keys() == b.keys(), f"{what}: key sets differ"
    for k in b:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def test_single_file_has_the_original_layout(tiny):
    keys = load_file(str(tiny[2])).keys()
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    # the keys diffusers itself uses to recognise an SD 1.x file and its CLIP text encoder
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys


def test_single_file_loads_same_weights_and_eps_as_diffusers_dir(tiny, offline):
    model, configs, single = tiny
    ref = StableDiffusionPrior.from_pretrained(str(model), "cpu", "fp32", image_size=16)
    got = StableDiffusionPrior.from_pretrained(str(single), "cpu", "fp32", image_size=16,
                                               single_file_config=str(configs))
    _assert_same_weights(got.unet, ref.unet, "unet")
    _assert_same_weights(got.vae, ref.vae, "vae")
    _assert_same_weights(got.text_encoder, ref.text_encoder, "text_encoder")
    assert got.latent_shape == ref.latent_shape == (4, 8, 8)
    torch.testing.assert_close(got.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
    assert got.prediction_type == ref.prediction_type == "epsilon"

    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, *ref.latent_shape, generator=g)
    t = torch.tensor([10, 500, 990])
    prompts = ["a red cube, front view", "blurry", ""]
    emb_ref, emb_got = ref.embed(prompts), got.embed(prompts)
    torch.testing.assert_close(emb_got, emb_ref, rtol=0, atol=0)
    eps_ref = ref.eps(z, t, emb_ref)
    assert eps_ref.abs().sum() > 0  # a real, non-degenerate prediction
    torch.testing.assert_close(got.eps(z, t, emb_got), eps_ref, rtol=0, atol=0)
    rgb = torch.rand(1, 3, 16, 16, generator=g)
    torch.testing.assert_close(got.encode(rgb, torch.Generator().manual_seed(1)),
                               ref.encode(rgb, torch.Generator().manual_seed(1)), rtol=0, atol=0)


def test_single_file_with_mismatched_config_names_path_and_key(tiny, offline, tmp_path):
    """A file whose architecture does not match prior.single_file_config (here: a wider UNet)."""
    other = build_tiny_sd(tmp_path / "other", with_vae=True, seed=4)
    cfg = other / "unet" / "config.json"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace('"block_out_channels": [\n    32,\n    64\n  ]',
                                                           '"block_out_channels": [\n    64,\n    64\n  ]'),
                   encoding="utf-8")
    assert '"block_out_channels": [\n    64,' in cfg.read_text(encoding="utf-8")
    with pytest.raises(PriorLoadError) as err:
        StableDiffusionPrior.from_pretrained(str(tiny[2]), "cpu", "fp32", image_size=16,
                                             single_file_config=str(other))
    msg = str(err.value)
    assert str(tiny[2]) in msg and "prior.single_file_config" in msg and str(other) in msg


def test_single_file_truncated_names_path_and_key(tiny, offline, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(tiny[2].read_bytes()[:4096])
    with pytest.raises(PriorLoadError) as err:
        StableDiffusionPrior.from_pretrained(str(bad), "cpu", "fp32", image_size=16,
                                             single_file_config=str(tiny[1]))
    msg = str(err.value)
    assert str(bad) in msg and "prior.single_file_config" in msg
