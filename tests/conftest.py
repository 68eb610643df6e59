"""Shared fixtures: a tiny random-weight Stable Diffusion saved in diffusers format.

No pretrained weights exist on this machine, so the production loader is exercised on a model
built from configs (a few hundred kB) with the same directory layout as SD 2.1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

# One intra-op thread: the tests use tiny tensors where a second thread only adds contention
# (measured: a tiny generation took 66 s with 2 threads vs 1.5 s with 1 on a loaded 2-core box),
# and CPU results stay bit-identical run to run.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


TINY_MERGES = ["r e", "re d</w>", "c u", "cu b", "cub e</w>", "v i", "vi e", "vie w</w>", "f r", "fr o", "fro n",
               "fron t</w>", "s i", "si d", "sid e</w>"]


def write_tiny_clip_tokenizer(folder: Path) -> None:
    """A valid CLIP BPE vocabulary: every byte (with and without </w>), a few merges, BOS/EOS."""
    from tokenizers.pre_tokenizers import ByteLevel

    folder.mkdir(parents=True, exist_ok=True)
    # CLIP's byte map (GPT-2's bytes_to_unicode, gone from transformers 5): its 256 characters in
    # code-point order are the map's values in order (printable bytes as themselves, then 256+n)
    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars]
    for m in TINY_MERGES:
        merged = m.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n", encoding="utf-8")


def build_tiny_sd(out_dir: Path, with_vae: bool = True, seed: int = 0) -> Path:
    """Random-init SD-2-style pipeline (UNet, VAE, CLIP text model, tokenizer, scheduler) saved to out_dir."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = out_dir / "tokenizer"
    write_tiny_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    in_ch = 4 if with_vae else 3
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_ch, out_channels=in_ch, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet")
    text_encoder.save_pretrained(out_dir / "text_encoder")
    tokenizer.save_pretrained(out_dir / "tokenizer")
    scheduler.save_pretrained(out_dir / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.39.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
             "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    if with_vae:
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            latent_channels=4, norm_num_groups=32, sample_size=16)
        vae.save_pretrained(out_dir / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    return out_dir


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny random SD (latent, VAE factor 2) in diffusers layout; 16x16 renders -> 4x8x8 latents."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "model", with_vae=True)


@pytest.fixture(scope="session")
def tiny_pixel_sd_dir(tmp_path_factory) -> Path:
    """The same without a VAE: a pixel-space model like the shipped toy SD (z = 2 rgb - 1)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_pixel_sd") / "model", with_vae=False, seed=1)


@pytest.fixture(scope="module")
def ray_local(request):
    """A local 2-CPU Ray for one test module (ray.init costs ~5 s); the module's own functions are
    pickled by value so Ray workers need not import the test module."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(request.module)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def sd_alphas() -> torch.Tensor:
    """SD's scaled-linear schedule, written out here independently of any prior module."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()
