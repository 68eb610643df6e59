"""CLIP-L score of an asset's evaluation views against its prompt.

Convention (torchmetrics' CLIPScore): per view s = 100 * cos(image_emb, text_emb); the asset's score
is max(mean over views, 0). Model: open_clip `metrics.clip_model` (ViT-L-14) with
`metrics.clip_pretrained` = an open_clip tag ("openai", downloaded through open_clip's cache) or a
local checkpoint file for offline clusters; OpenAI weights need QuickGELU
(`metrics.clip_quick_gelu`). Images go through open_clip's own preprocessing (bicubic resize to
224, centre crop, CLIP mean/std) and are embedded in batches of `metrics.batch_size`.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from common.config import MetricsConfig
from stages.metrics.errors import MetricWeightsError, metric_device

log = logging.getLogger(__name__)

_CACHE: dict[tuple, "ClipScorer"] = {}


class ClipScorer:
    """An open_clip model, its preprocessing and tokenizer; one `score()` used everywhere."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], device: torch.device | str = "cpu",
                 batch_size: int = 16) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(V, D) unit-norm image embeddings, computed in batches."""
        feats = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([self.preprocess(im.convert("RGB")) for im in images[i:i + self.batch_size]])
            feats.append(F.normalize(self.model.encode_image(x.to(self.device)).float(), dim=-1))
        return torch.cat(feats).cpu()

    @torch.no_grad()
    def text_features(self, prompt: str) -> torch.Tensor:
        """(D,) unit-norm text embedding."""
        tokens = self.tokenizer([prompt]).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)[0].cpu()

    def per_view(self, images: Sequence[Image.Image], prompt: str) -> torch.Tensor:
        """(V,) 100 * cosine for each view (unclipped)."""
        if not images:
            raise ValueError("clip_l: no images to score; the render stage wrote no frames")
        return 100.0 * (self.image_features(images) @ self.text_features(prompt))

    def score(self, images: Sequence[Image.Image], prompt: str) -> float:
        """max(mean_v 100 * cos, 0), as torchmetrics' CLIPScore."""
        return float(self.per_view(images, prompt).mean().clamp_min(0.0))


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.startswith(".") or s.endswith((".pt", ".pth", ".bin", ".safetensors"))


def load_clip(mc: MetricsConfig) -> ClipScorer:
    """Build (once per process) the configured CLIP; missing weights fail fast with the fix."""
    key = (mc.clip_model, mc.clip_pretrained, mc.clip_quick_gelu, mc.device, mc.batch_size)
    if key in _CACHE:
        return _CACHE[key]
    import open_clip

    pre = mc.clip_pretrained
    fix = (f"download the OpenAI {mc.clip_model} checkpoint on a connected machine and set "
           f"metrics.clip_pretrained=/path/to/checkpoint (or drop 'clip_l' from metrics.metrics)")
    if not pre.strip():
        raise MetricWeightsError(f"clip_l: metrics.clip_pretrained is empty; a random-init CLIP gives "
                                 f"meaningless scores; {fix}")
    if _looks_like_path(pre) and not os.path.isfile(pre):
        raise MetricWeightsError(f"clip_l: checkpoint file {pre!r} (config key metrics.clip_pretrained) "
                                 f"does not exist; {fix}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            mc.clip_model, pretrained=pre, force_quick_gelu=mc.clip_quick_gelu, device="cpu")
    except Exception as exc:  # download failures, unknown tags, bad files: all the same fix
        raise MetricWeightsError(
            f"clip_l: cannot load {mc.clip_model} weights {pre!r} (config key "
            f"metrics.clip_pretrained): {type(exc).__name__}: {exc}; {fix}") from exc
    scorer = ClipScorer(model, preprocess, open_clip.get_tokenizer(mc.clip_model),
                        metric_device(mc.device), mc.batch_size)
    _CACHE[key] = scorer
    return scorer


def clip_score(mc: MetricsConfig, images: Sequence[Image.Image], prompt: str) -> float:
    return load_clip(mc).score(images, prompt)
