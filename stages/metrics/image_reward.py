"""ImageReward (THUDM, v1.0) of an asset's evaluation views: per-view reward, mean over views.

Which implementation, and why (for the README): the network is built from the image-reward 1.5
package's own modules (BLIP's `VisionTransformer` from ImageReward.models.BLIP.vit, its
cross-attention `BertModel` from ImageReward.models.BLIP.med, the reward `MLP` and the image
preprocessing `_transform` from ImageReward.ImageReward), so the numbers are the package's. We do not
call `ImageReward.load()` / the `ImageReward` class itself because (1) it loads the checkpoint with
strict=False, so a truncated or foreign checkpoint silently scores with random weights; here every
parameter of the model must be in the checkpoint (missing keys are an error); (2) it hard-codes
the tokenizer as the hub name 'bert-base-uncased' and ViT-L, so it cannot run offline nor be
tested with a small random-init model; (3) it scores one image per forward; here views are batched.
The module tree and parameter names are the same as the package's (`blip.visual_encoder`,
`blip.text_encoder`, `mlp.layers`), so the official ImageReward.pt loads as is, and the package's
own `ImageReward.inference_rank` runs on this model (the test checks both give the same numbers).

Install notes: image-reward 1.5 pins timm==0.6.13 (conflicts with open-clip-torch), so it is
installed with --no-deps; it needs transformers < 4.56 (pinned 4.55.4), `clip` (openai-clip) and,
through its package __init__ (ReFL training code), `datasets` (pinned 5.0.1).

Offline: `metrics.image_reward_checkpoint` (local ImageReward.pt), `metrics.image_reward_med_config`
(local med_config.json) and `metrics.image_reward_tokenizer` (local bert-base-uncased tokenizer dir).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from common.config import MetricsConfig
from stages.metrics.errors import MetricWeightsError, metric_device

log = logging.getLogger(__name__)

HUB_REPO = "THUDM/ImageReward"
HUB_NAMES = {"ImageReward-v1.0": "ImageReward.pt"}
MAX_TOKENS = 35  # the package's tokenizer max_length
REWARD_MEAN = 0.16717362830052426  # the package's normalisation constants
REWARD_STD = 1.0333394966054072
_CACHE: dict[tuple, "ImageRewardModel"] = {}


def _pkg():
    """The image-reward package modules (imported lazily: the package import pulls heavy deps)."""
    from ImageReward.ImageReward import MLP, _transform
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer

    return MLP, _transform, BertConfig, BertModel, VisionTransformer


def prepare_tokenizer(tok):
    """What the package's BLIP `init_tokenizer` does to bert-base-uncased (adds [DEC] and [ENC])."""
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.additional_special_tokens_ids[0]
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
        MLP, _transform, BertConfig, BertModel, VisionTransformer = _pkg()
        visual = VisionTransformer(img_size=image_size, patch_size=patch_size, embed_dim=vit_width,
                                   depth=vit_depth, num_heads=vit_heads, drop_path_rate=0.1)
        cfg = med_config if isinstance(med_config, BertConfig) else BertConfig.from_json_file(med_config)
        cfg.encoder_width = vit_width
        text = BertModel(config=cfg, add_pooling_layer=False)
        self.blip = _Blip(visual, text, tokenizer)
        self.mlp = MLP(cfg.hidden_size)
        self.preprocess = _transform(image_size)
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
            atts = torch.ones(emb.shape[:-1], dtype=torch.long, device=self.device)
            n = x.shape[0]
            h = self.blip.text_encoder(text.input_ids.expand(n, -1), attention_mask=text.attention_mask.expand(n, -1),
                                       encoder_hidden_states=emb, encoder_attention_mask=atts,
                                       return_dict=True).last_hidden_state[:, 0, :].float()
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
    tok = load_tokenizer(mc.image_reward_tokenizer)
    dev = metric_device(mc.device)
    model = ImageRewardModel(med, tok, device=dev, **arch)
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
