"""What the distillation code sees of a 2D diffusion prior, and the per-prompt embedding cache.

A prior is a frozen 2D diffusion model behind five calls: `encode`/`decode` between renders and
its latent space, `embed` (cached per prompt string by `EmbeddingCache`), one batched `eps` and
`count_tokens`. The implementations (`stable_diffusion`, `toy_exact`) import this module; the
loader by name is `stages.priors.registry`.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Prior(Protocol):
    name: str
    device: torch.device
    dtype: torch.dtype
    alphas_cumprod: Tensor            # (T,) float32 on `device`
    latent_shape: tuple[int, int, int]
    image_size: int
    max_prompt_tokens: int

    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor: ...
    def decode(self, z: Tensor) -> Tensor: ...
    def embed(self, prompts: list[str]) -> Tensor: ...
    def eps(self, z_t: Tensor, t: Tensor, emb: Tensor) -> Tensor: ...
    def count_tokens(self, prompt: str) -> int: ...


class EmbeddingCache:
    """Prompt string -> embedding, computed once per prior; counts hits for tests and logs."""

    def __init__(self, compute: Callable[[list[str]], Tensor]) -> None:
        self._compute = compute
        self._store: dict[str, Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        if isinstance(prompts, str):
            raise TypeError(f"embed() takes a list of prompts, got the string {prompts!r}; wrap it: [prompt]")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._store]
        self.hits += len(prompts) - sum(1 for p in prompts if p in missing)
        if missing:
            self.misses += len(missing)
            out = self._compute(missing)
            for p, e in zip(missing, out):
                self._store[p] = e.detach()
        return torch.stack([self._store[p] for p in prompts])

    def __len__(self) -> int:
        return len(self._store)
