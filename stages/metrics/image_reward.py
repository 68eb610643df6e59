"""ImageReward (THUDM, v1.0) of an asset's evaluation views: per-view reward, mean over views.

Which implementation, and why (for the README): the network is our port of the image-reward 1.5
package's BLIP model (stages/metrics/blip.py: BLIP's ViT image encoder and its BERT text encoder
with cross-attention), with the package's reward `MLP`, image preprocessing and normalisation
constants copied here. The package itself cannot be installed next to transformers 5 (its med.py
imports helpers removed in transformers 4.56). The port keeps the package's module tree and
parameter names (`blip.visual_encoder`, `blip.text_encoder`, `mlp.layers`), so the official
ImageReward.pt loads as is; tests/test_metric_image_reward.py checks the state-dict layout and
the scores against numbers the package computed on a random-init model in the checkpoint's format
(tests/data/image_reward_reference.json, made by tests/make_image_reward_reference.py).
We also differ from `ImageReward.load()` on purpose: (1) it loads the checkpoint with strict=False,
so a truncated or foreign checkpoint silently scores with random weights; here every parameter of
the model must be in the checkpoint (missing keys are an error); (2) it hard-codes the tokenizer as
the hub name 'bert-base-uncased' and ViT-L, so it cannot run offline nor be tested with a small
random-init model; (3) it scores one image per forward; here views are batched.

Offline: `metrics.image_reward_checkpoint` (local ImageReward.pt), `metrics.image_reward_med_config`
(local med_config.json) and `metrics.image_reward_tokenizer` (local bert-base-uncased tokenizer dir).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from common.config import MetricsConfig
from stages.metrics.blip import BertModel, MedConfig, VisionTransformer
from stages.metrics.errors import MetricWeightsError, metric_device

log = logging.getLogger(__name__)

HUB_REPO = "THUDM/ImageReward"
HUB_NAMES = {"ImageReward-v1.0": "ImageReward.pt"}
MAX_TOKENS = 35  # the package's tokenizer max_length
REWARD_MEAN = 0.16717362830052426  # the package's normalisation constants
REWARD_STD = 1.0333394966054072
_CACHE: dict[tuple, "ImageRewardModel"] = {}


class MLP(nn.Module):
    """The package's reward head (linear layers; its ReLUs are commented out upstream)."""

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                    nn.Linear(16, 1))
        for name, param in self.layers.named_parameters():
            if "weight" in name:
                nn.init.normal_(param, mean=0.0, std=1.0 / (input_size + 1))
            else:
                nn.init.zeros_(param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def image_transform(n_px: int):
    """The package's `_transform` (CLIP's): bicubic resize, centre crop, RGB, CLIP mean/std."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(n_px, interpolation=InterpolationMode.BICUBIC), CenterCrop(n_px),
                    lambda im: im.convert("RGB"), ToTensor(),
                    Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])


def prepare_tokenizer(tok):
    """What the package's BLIP `init_tokenizer` does to bert-base-uncased: adds [DEC] (as BOS) and
    [ENC] (ids 30522 and 30523 there, hence the checkpoint's vocab_size 30524)."""
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_tokens(["[ENC]"], special_tokens=True)
    return tok


class _Blip(nn.Module):
    """BLIP trunk with the attribute names of the package's BLIP_Pretrain."""

    def __init__(self, visual_encoder: nn.Module, text_encoder: nn.Module, tokenizer, embed_dim: int = 256):
        super().__init__()
        self.visual_encoder = visual_encoder
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        vw = visual_encoder.embed_dim
        tw = text_encoder.config.hidden_size
        self.vision_proj = nn.Linear(vw, embed_dim)  # in the checkpoint; unused for the reward
        self.text_proj = nn.Linear(tw, embed_dim)


class ImageRewardModel(nn.Module):
    """ImageReward: BLIP ViT image tokens cross-attended by the BERT text encoder, MLP on [CLS]."""

    def __init__(self, med_config, tokenizer, image_size: int = 224, vit_width: int = 1024,
                 vit_depth: int = 24, vit_heads: int = 16, patch_size: int = 16,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        visual = VisionTransformer(img_size=image_size, patch_size=patch_size, embed_dim=vit_width,
                                   depth=vit_depth, num_heads=vit_heads)
        if isinstance(med_config, MedConfig):
            cfg = replace(med_config)
        elif isinstance(med_config, dict):
            cfg = MedConfig.from_dict(med_config)
        else:
            cfg = MedConfig.from_json_file(med_config)
        cfg.encoder_width = vit_width  # as BLIP_Pretrain does
        if len(tokenizer) > cfg.vocab_size:
            raise MetricWeightsError(f"image_reward: the tokenizer has {len(tokenizer)} tokens but the "
                                     f"med_config's vocab_size is {cfg.vocab_size}; use the bert-base-uncased "
                                     f"tokenizer and med_config.json that go with the checkpoint "
                                     f"(metrics.image_reward_tokenizer, metrics.image_reward_med_config)")
        text = BertModel(cfg)
        self.blip = _Blip(visual, text, tokenizer)
        self.mlp = MLP(cfg.hidden_size)
        self.preprocess = image_transform(image_size)
        self.mean, self.std = REWARD_MEAN, REWARD_STD
        self.device = torch.device(device)

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Strict on parameters: every model parameter must come from the checkpoint."""
        own = self.state_dict()
        params = {k for k, _ in self.named_parameters()}
        missing = sorted(k for k in params if k not in state_dict)
        if missing:
            raise MetricWeightsError(
                f"image_reward: checkpoint {source!r} lacks {len(missing)} of the model's {len(params)} "
                f"parameters (first: {missing[:5]}); it is not an ImageReward-v1.0 checkpoint "
                f"(config key metrics.image_reward_checkpoint)")
        bad = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
        if bad:
            raise MetricWeightsError(
                f"image_reward: checkpoint {source!r} has wrong shapes for {bad[:5]} (e.g. "
                f"{tuple(state_dict[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); check "
                f"metrics.image_reward_med_config matches the checkpoint")
        unexpected = sorted(k for k in state_dict if k not in own)
        if unexpected:
            log.warning("image_reward: ignoring %d checkpoint keys not in the model: %s", len(unexpected),
                        unexpected[:5])
        self.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)

    @torch.no_grad()
    def rewards(self, images: Sequence[Image.Image], prompt: str, batch_size: int = 16) -> torch.Tensor:
        """(V,) normalised rewards, one per image, the package's formula, batched over images."""
        if not images:
            raise ValueError("image_reward: no images to score; the render stage wrote no frames")
        self.eval()
        text = self.blip.tokenizer(prompt, padding="max_length", truncation=True, max_length=MAX_TOKENS,
                                   return_tensors="pt").to(self.device)
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.preprocess(im) for im in images[i:i + batch_size]]).to(self.device)
            emb = self.blip.visual_encoder(x)
            n = x.shape[0]
            h = self.blip.text_encoder(text["input_ids"].expand(n, -1), text["attention_mask"].expand(n, -1),
                                       emb)[:, 0, :].float()
            out.append(((self.mlp(h) - self.mean) / self.std)[:, 0].cpu())
        return torch.cat(out)

    def score(self, images: Sequence[Image.Image], prompt: str, batch_size: int = 16) -> float:
        return float(self.rewards(images, prompt, batch_size).mean())


def _hub_file(filename: str, key: str, fix: str) -> str:
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id=HUB_REPO, filename=filename)
    except Exception as exc:  # offline, no such file, auth: one fix
        raise MetricWeightsError(f"image_reward: cannot fetch {HUB_REPO}/{filename} ({type(exc).__name__}: "
                                 f"{exc}); {fix} (config key {key})") from exc


def load_image_reward(mc: MetricsConfig, arch: dict | None = None) -> ImageRewardModel:
    """The official ImageReward-v1.0 from local files or the hub; fails fast naming what is missing.

    `arch` overrides the vision-tower shape (image_size, vit_width, vit_depth, vit_heads,
    patch_size); the official checkpoint is ViT-L/16 at 224 (the defaults). Tests use a tiny one.
    """
    arch = dict(arch or {})
    key = (mc.image_reward_checkpoint, mc.image_reward_med_config, mc.image_reward_tokenizer, mc.device,
           tuple(sorted(arch.items())))
    if key in _CACHE:
        return _CACHE[key]
    skip = "or drop 'image_reward' from metrics.metrics"
    ck = mc.image_reward_checkpoint
    if ck in HUB_NAMES:
        ck_path = _hub_file(HUB_NAMES[ck], "metrics.image_reward_checkpoint",
                            f"download ImageReward.pt and set metrics.image_reward_checkpoint=/path/ImageReward.pt {skip}")
    elif os.path.isfile(ck):
        ck_path = ck
    else:
        raise MetricWeightsError(f"image_reward: checkpoint {ck!r} (config key metrics.image_reward_checkpoint) "
                                 f"is neither {list(HUB_NAMES)} nor an existing file; {skip}")
    med = mc.image_reward_med_config
    if med and not os.path.isfile(med):
        raise MetricWeightsError(f"image_reward: med_config {med!r} (config key "
                                 f"metrics.image_reward_med_config) does not exist")
    med = med or _hub_file("med_config.json", "metrics.image_reward_med_config",
                           f"download med_config.json and set metrics.image_reward_med_config {skip}")
    try:
        med_cfg = MedConfig.from_json_file(med)
    except (OSError, ValueError, TypeError) as exc:  # unreadable, not JSON, unsupported values
        raise MetricWeightsError(f"image_reward: med_config {med!r} cannot be used ({type(exc).__name__}: "
                                 f"{exc}); give the official med_config.json (config key "
                                 f"metrics.image_reward_med_config)") from exc
    tok = load_tokenizer(mc.image_reward_tokenizer)
    dev = metric_device(mc.device)
    model = ImageRewardModel(med_cfg, tok, device=dev, **arch)
    try:
        sd = torch.load(ck_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetricWeightsError(f"image_reward: cannot read checkpoint {ck_path!r} as a tensor state "
                                 f"dict ({type(exc).__name__}: {exc}); config key "
                                 f"metrics.image_reward_checkpoint") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    model.load_checkpoint(sd, ck_path)
    model = model.to(dev).eval()
    _CACHE[key] = model
    return model


def load_tokenizer(name_or_dir: str):
    from transformers import BertTokenizer
    from stages.priors.hf_quiet import quiet
    quiet()  # no library progress bars / advisories on stderr (stages/priors/hf_quiet.py)

    try:
        tok = BertTokenizer.from_pretrained(name_or_dir)
    except Exception as exc:
        raise MetricWeightsError(
            f"image_reward: cannot load the BERT tokenizer {name_or_dir!r} (config key "
            f"metrics.image_reward_tokenizer; offline: save bert-base-uncased's tokenizer to a folder "
            f"and give its path): {type(exc).__name__}: {exc}") from exc
    return prepare_tokenizer(tok)


def image_reward_score(mc: MetricsConfig, images: Sequence[Image.Image], prompt: str) -> float:
    return load_image_reward(mc).score(images, prompt, mc.batch_size)
