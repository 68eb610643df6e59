"""The exact toy prior: the Bayes-optimal denoiser of the toy views' empirical distribution.

Why: it is the oracle for SDS-type methods and for unit tests (no training, no approximation).
For x_t = sqrt(a) x0 + sqrt(1-a) eps with x0 uniform over a finite view set {x_i},
E[x0 | x_t] = sum_i w_i x_i with w = softmax(-||x_t - sqrt(a) x_i||^2 / (2 (1 - a))), and
eps_hat = (x_t - sqrt(a) x0_hat) / sqrt(1 - a). Pixel space (z = 2 rgb - 1), SD's scheduler.
The logits span ~2e4 at 32x32, so distances are float64 with the max subtracted.

Embeddings are integers: the object's catalogue index for the conditional, -1 for the null /
unknown negative prompt (all objects' views). A view suffix (", front view") is accepted and
ignored: the oracle conditions on the object, not on the view.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from stages.priors.protocol import EmbeddingCache
from stages.toyworld.catalogue import Catalogue, load_catalogue
from stages.toyworld.views import ViewParams, catalogue_views

if TYPE_CHECKING:  # pragma: no cover
    from common.config import PriorConfig, ToyConfig

log = logging.getLogger(__name__)

NULL = -1
BETA_START, BETA_END, T = 0.00085, 0.012, 1000


def sd_alphas_cumprod() -> Tensor:
    """SD's scaled-linear schedule (betas sqrt-linear 0.00085 -> 0.012, T = 1000), float32."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


class ToyExactPrior:
    """`Prior` over cached toy views; `eps` handles cond/neg/null rows of one batch together."""

    def __init__(self, catalogue: Catalogue | str | None = None, views: ViewParams | None = None,
                 cache_dir: str | None = None, device: torch.device | str = "cpu",
                 names: list[str] | None = None, negative_unknown: str = "null") -> None:
        self.name = "toy_exact"
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.catalogue = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
        vp = views or ViewParams()
        self.image_size = int(vp.resolution)
        self.latent_shape = (3, self.image_size, self.image_size)
        self.max_prompt_tokens = 77
        self.alphas_cumprod = sd_alphas_cumprod().to(self.device)
        if negative_unknown not in ("null", "error"):
            raise ValueError(f"negative_unknown={negative_unknown!r}: use 'null' or 'error'")
        self.negative_unknown = negative_unknown
        objs = catalogue_views(vp, self.catalogue, cache_dir, names)
        self.object_names = [v.name for v in objs]
        # per object: (K, D) float64 flattened views in [-1, 1] and their squared norms
        self._x = [(v.chw().reshape(len(v.images), -1).double() * 2 - 1).to(self.device) for v in objs]
        self._sq = [x.pow(2).sum(1) for x in self._x]
        self._index = {n: i for i, n in enumerate(self.object_names)}
        self._cache = EmbeddingCache(self._embed_uncached)

    @classmethod
    def from_config(cls, cfg: "PriorConfig", device: torch.device | str = "cpu",
                    toy: "ToyConfig | None" = None) -> "ToyExactPrior":
        """Views at the prior's image size with the toy section's camera/count/cache settings."""
        if toy is None:
            from common.config import ToyConfig

            toy = ToyConfig()
        vp = ViewParams(num_views=int(toy.views_per_object), resolution=int(cfg.image_size),
                        radius_range=tuple(toy.camera_radius_range),  # type: ignore[arg-type]
                        fovy_range=tuple(toy.camera_fovy_range))  # type: ignore[arg-type]
        return cls(toy.catalogue or None, vp, toy.cache_dir or None, device)

    # Prior interface ------------------------------------------------------------------------
    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Identity latent: z = 2 rgb - 1 (differentiable)."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"encode: expected (B, 3, H, W) images, got {tuple(rgb.shape)}")
        return 2.0 * rgb - 1.0

    def decode(self, z: Tensor) -> Tensor:
        return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

    def embed(self, prompts: list[str]) -> Tensor:
        """(B,) long object indices; "" -> -1 (null). Cached per prompt string."""
        return self._cache(prompts)

    def _embed_uncached(self, prompts: list[str]) -> Tensor:
        out = []
        for p in prompts:
            key = re.sub(r",\s*(front|side|back) view\s*$", "", p.strip())
            if not key:
                out.append(NULL)
                continue
            obj = self.catalogue.find(key)
            if obj is not None and obj.name in self._index:
                out.append(self._index[obj.name])
            elif self.negative_unknown == "null":
                # a free-text negative prompt ("blurry, low quality") has no toy meaning: null
                log.warning("toy_exact: prompt %r is not a catalogue object; using the null (all objects)", p)
                out.append(NULL)
            else:
                self.catalogue.get(key)  # raises CatalogueError naming the prompt
                raise KeyError(f"toy_exact: object for {p!r} has no views loaded (names={self.object_names})")
        return torch.tensor(out, dtype=torch.long, device=self.device)

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split()) + 2

    @torch.no_grad()
    def x0_hat(self, z_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """Posterior mean E[x0 | x_t] (float64) for each row's view set."""
        B = z_t.shape[0]
        if emb.shape[0] != B:
            raise ValueError(f"eps: {B} latents but {emb.shape[0]} embeddings")
        if tuple(z_t.shape[1:]) != self.latent_shape:
            raise ValueError(f"eps: expected latents of shape (B, {self.latent_shape}), got {tuple(z_t.shape)}")
        t = torch.as_tensor(t, device=self.device, dtype=torch.long).reshape(-1).expand(B)
        # Perp-Neg interpolates embeddings of one prompt's views: same index, possibly as a float
        emb = emb.to(self.device).reshape(B).round().long()
        a = self.alphas_cumprod[t].double()
        x = z_t.to(self.device).double().reshape(B, -1)
        out = torch.empty_like(x)
        for e in torch.unique(emb).tolist():
            rows = (emb == e).nonzero().flatten()
            sets = range(len(self._x)) if e == NULL else [int(e)]
            if e != NULL and not 0 <= int(e) < len(self._x):
                raise ValueError(f"eps: embedding {e} is not an object index (0..{len(self._x) - 1}) or -1")
            xr, ar = x[rows], a[rows][:, None]
            # -||x - sqrt(a) xi||^2 / (2 (1-a)), without the per-row constant ||x||^2
            logits = torch.cat([(2 * ar.sqrt() * (xr @ self._x[i].T) - ar * self._sq[i][None]) / (2 * (1 - ar))
                                for i in sets], dim=1)
            w = torch.softmax(logits - logits.max(dim=1, keepdim=True).values, dim=1)
            views = torch.cat([self._x[i] for i in sets]) if len(sets) > 1 else self._x[sets[0]]
            out[rows] = w @ views
        return out.reshape(z_t.shape)

    @torch.no_grad()
    def eps(self, z_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        B = z_t.shape[0]
        t = torch.as_tensor(t, device=self.device, dtype=torch.long).reshape(-1).expand(B)
        a = self.alphas_cumprod[t].double().view(-1, 1, 1, 1)
        x0 = self.x0_hat(z_t, t, emb)
        e = (z_t.to(self.device).double() - a.sqrt() * x0) / (1 - a).sqrt()
        return e.float()

    @property
    def cache_stats(self) -> dict[str, int]:
        return {"hits": self._cache.hits, "misses": self._cache.misses, "size": len(self._cache)}


def load(cfg: "PriorConfig", device: torch.device | str = "cpu", toy: "ToyConfig | None" = None) -> ToyExactPrior:
    """Entry point used by `stages.priors.registry` for prior.name=toy_exact."""
    return ToyExactPrior.from_config(cfg, device, toy)
