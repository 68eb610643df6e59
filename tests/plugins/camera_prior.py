"""A test plugin: a multi-view prior conditioned on the cameras, with two text embeddings.

Registered from this file alone (`--set pipeline.plugins=[tests/plugins/camera_prior.py]`,
`prior.name=camera_mv`); no production file names it. Like an MVDream-style prior it needs each
view's camera beside the text: `camera_conditioned = True`, and the guidance passes the batch's
cameras to `eps`. Its conditioning is a dict (a token embedding and a pooled one, as SDXL has), opaque
to the guidance. Its own option, `prior.options.tint`, is a key it reads (so it enters asset ids).

The model: a pixel-space denoiser whose clean image is a colour from the prompt, shaded by the
camera's azimuth (a valid eps-prediction: eps = (z_t - sqrt(a_t) x0) / sqrt(1 - a_t)).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from stages.priors.protocol import EmbeddingCache
from stages.priors.registry import PriorSpec, register_prior

CALLS: list[tuple[int, int]] = []   # (latents, cameras) of each eps call (for the test)


@dataclass
class CameraPriorOptions:
    tint: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.tint) <= 1.0:
            raise ValueError(f"prior.options.tint: {self.tint!r} is not in [0, 1]")


class CameraPrior:
    name = "camera_mv"
    camera_conditioned = True
    max_prompt_tokens = 77

    def __init__(self, image_size: int, device: torch.device, options: CameraPriorOptions) -> None:
        self.device, self.dtype, self.image_size = device, torch.float32, int(image_size)
        self.latent_shape = (3, self.image_size, self.image_size)
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)
        self.tint = float(options.tint)
        self._cache = EmbeddingCache(self._embed_uncached)

    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return 2.0 * rgb - 1.0

    def decode(self, z: Tensor) -> Tensor:
        return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split()) + 2

    def embed(self, prompts: list[str]) -> dict:
        return self._cache(prompts)

    def _embed_uncached(self, prompts: list[str]) -> dict:
        rgb = []
        for p in prompts:
            h = hashlib.sha256(p.split(",")[0].strip().encode()).digest()
            rgb.append([b / 255.0 for b in h[:3]] if p else [0.5, 0.5, 0.5])
        tokens = torch.tensor(rgb, dtype=torch.float32, device=self.device)
        return {"tokens": tokens.unsqueeze(1).expand(-1, 4, -1).contiguous(), "pooled": tokens.mean(1)}

    def eps(self, z_t: Tensor, t: Tensor, emb: dict, cameras=None) -> Tensor:
        if cameras is None:
            raise AssertionError("the guidance did not pass the cameras")
        n, v = z_t.shape[0], len(cameras)
        CALLS.append((n, v))
        az = torch.deg2rad(cameras.azimuth_deg.to(self.device).float()).repeat(n // v)   # latent i: camera i % v
        shade = 1.0 - self.tint * 0.5 * (1.0 - torch.cos(az))
        colour = emb["tokens"].mean(1) * (0.5 + 0.5 * emb["pooled"][:, None])
        x0 = (2.0 * colour * shade[:, None] - 1.0)[:, :, None, None].expand_as(z_t)
        a = self.alphas_cumprod[torch.as_tensor(t, device=self.device).reshape(-1).expand(n)].view(-1, 1, 1, 1)
        return (z_t - a.sqrt() * x0) / (1 - a).sqrt()


def _load(cfg, device, toy):
    return CameraPrior(cfg.image_size, device, SPEC.parse_options(cfg))


SPEC = register_prior(PriorSpec("camera_mv", _load, config_keys=(), options=CameraPriorOptions))
