"""What the distillation code sees of a 2D diffusion prior, and the per-prompt embedding cache.

A prior is a frozen 2D diffusion model behind five calls: `encode`/`decode` between renders and
its latent space, `embed` (cached per prompt string by `EmbeddingCache`), one batched `eps` and
`count_tokens`. The implementations (`stable_diffusion`, `toy_exact`) import this module; the
loader by name is `stages.priors.registry`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.utils._pytree as pytree
from torch import Tensor


# A prior's conditioning is opaque to the guidance: what `embed` returns, a Tensor or any pytree of
# tensors (dict, tuple, dataclass registered with torch's pytree) whose leaves all have the batch
# (one row per prompt) as dim 0: SD's text embeddings, SDXL's (embeddings, pooled, time ids), ...
# The guidance only selects, repeats, joins and interpolates rows, leaf by leaf, with these helpers.
Conditioning = Any


def _map(fn: Callable[..., Tensor], *conds: Conditioning) -> Conditioning:
    flat = [pytree.tree_flatten(c) for c in conds]
    leaves = [f[0] for f in flat]
    return pytree.tree_unflatten([fn(*xs) for xs in zip(*leaves)], flat[0][1])


def cond_rows(c: Conditioning) -> int:
    """How many rows (prompts) a conditioning holds."""
    return int(pytree.tree_leaves(c)[0].shape[0])


def cond_row(c: Conditioning, i: int) -> Conditioning:
    return _map(lambda x: x[i], c)


def cond_head(c: Conditioning, n: int) -> Conditioning:
    return _map(lambda x: x[:n], c)


def cond_expand(row: Conditioning, n: int) -> Conditioning:
    """One row (as `cond_row` gives it) repeated as `n` rows (a view, no copy)."""
    return _map(lambda x: x.expand(n, *x.shape), row)


def cond_cat(conds: Sequence[Conditioning]) -> Conditioning:
    return _map(lambda *xs: torch.cat(xs, dim=0), *conds)


def cond_stack(rows: Sequence[Conditioning]) -> Conditioning:
    return _map(lambda *xs: torch.stack(xs, dim=0), *rows)


def cond_lerp(a: Conditioning, b: Conditioning, r: float) -> Conditioning:
    """r * a + (1 - r) * b, leaf by leaf (Perp-Neg's interpolated view conditioning)."""
    return _map(lambda x, y: r * x + (1.0 - r) * y, a, b)


@runtime_checkable
class Prior(Protocol):
    """`embed` returns a `Conditioning`; `eps(z_t, t, cond)` takes one with a row per latent.
    A prior conditioned on the cameras too (a multi-view prior) sets `camera_conditioned = True`
    and takes `eps(z_t, t, cond, cameras=...)`: the batch's `kernels.cameras.Cameras`, one per view,
    latent i seen by camera i % len(cameras) (the guidance passes them through untouched)."""

    name: str
    device: torch.device
    dtype: torch.dtype
    alphas_cumprod: Tensor            # (T,) float32 on `device`
    latent_shape: tuple[int, int, int]
    image_size: int
    max_prompt_tokens: int

    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor: ...
    def decode(self, z: Tensor) -> Tensor: ...
    def embed(self, prompts: list[str]) -> Conditioning: ...
    def eps(self, z_t: Tensor, t: Tensor, emb: Conditioning) -> Tensor: ...
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
            for i, p in enumerate(missing):
                self._store[p] = _map(lambda x: x.detach(), cond_row(out, i))
        return cond_stack([self._store[p] for p in prompts])

    def __len__(self) -> int:
        return len(self._store)
