"""The prior interface the distillation code sees, view-dependent prompts, and guided noise.

A prior is a frozen 2D diffusion model behind five calls: `encode`/`decode` between renders and
its latent space, `embed` (cached per prompt string), one batched `eps` and `count_tokens`.
Everything method-specific (CFG vs Perp-Neg) lives in `make_guided_eps`, which turns a prior, a
prompt and the batch's camera azimuths into a `kernels.distill.GuidedEps`: ONE batched `eps`
call over [cond, neg, extra negatives] and a per-view weighting of the predictions. CFG is the
special case with no extra negatives, so both share one code path.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from stages import faults

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PriorConfig, ToyConfig

log = logging.getLogger(__name__)

# prompts whose length was checked, per prior kind: the tokenizer runs once per prompt and process,
# not on every generate iteration (and the truncation warning is given once)
_LENGTH_CHECKED: set[tuple[str, int, str]] = set()
VIEW_SUFFIXES = {"front": ", front view", "side": ", side view", "back": ", back view"}


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


# ----------------------------------------------------------------------------------------------
# View-dependent prompts
# ----------------------------------------------------------------------------------------------
def wrap_azimuth(azimuth_deg: float) -> float:
    """Any angle -> [-180, 180)."""
    return (float(azimuth_deg) + 180.0) % 360.0 - 180.0


def view_direction(azimuth_deg: float, front_angle_deg: float = 60.0, back_angle_deg: float = 60.0) -> str:
    """'front' within +-front/2 of azimuth 0, 'back' within +-back/2 of 180, else 'side'."""
    a = abs(wrap_azimuth(azimuth_deg))
    if a < front_angle_deg / 2.0:
        return "front"
    if a > 180.0 - back_angle_deg / 2.0:
        return "back"
    return "side"


def view_suffix(azimuth_deg: float, front_angle_deg: float = 60.0, back_angle_deg: float = 60.0) -> str:
    """', front view' | ', side view' | ', back view' for a camera azimuth (degrees, 0 = front)."""
    return VIEW_SUFFIXES[view_direction(azimuth_deg, front_angle_deg, back_angle_deg)]


# ----------------------------------------------------------------------------------------------
# Guidance: CFG and Perp-Neg as one weighting over one batched prediction
# ----------------------------------------------------------------------------------------------
@dataclass
class PerpNegParams:
    """Perp-Neg of stable-dreamfusion / LucidDreamer (the authors' base); spec values as defaults."""

    negative_weight: float = -2.0
    front_decay: float = 2.0
    side_decay: float = 10.0


def perp_neg_view(azimuth_deg: float, p: PerpNegParams) -> tuple[str, str, float, tuple[str, str], tuple[float, float]]:
    """Interpolation and negatives for one view: (start, end, r, (neg1, neg2), (w1, w2)).

    The positive embedding is r * emb[start] + (1 - r) * emb[end]; each negative direction's
    prediction enters through its component perpendicular to the positive direction, weighted
    by w (<= 0). Front half: front->side with weights decaying away from the matching view;
    back half: side->back with front always negative (stable-dreamfusion `get_pos_neg_text_embeddings`).
    """
    a = wrap_azimuth(azimuth_deg)
    if -90.0 <= a < 90.0:
        r = 1.0 - abs(a) / 90.0
        w_front = 0.0 if r > 0.8 else math.exp(-r * p.front_decay) * p.negative_weight
        w_side = 0.0 if r < 0.2 else math.exp(-(1.0 - r) * p.side_decay) * p.negative_weight
        return "front", "side", r, ("front", "side"), (w_front, w_side)
    r = 1.0 - (abs(a) - 90.0) / 90.0
    w_side = 0.0 if r > 0.8 else math.exp(-r * p.side_decay) * p.negative_weight / 2.0
    return "side", "back", r, ("side", "front"), (w_side, p.negative_weight)


def perpendicular_component(x: Tensor, y: Tensor) -> Tensor:
    """Per sample: x minus its projection on y (flattened over C, H, W)."""
    dims = tuple(range(1, x.dim()))
    num = (x * y).sum(dim=dims, keepdim=True)
    den = (y * y).sum(dim=dims, keepdim=True).clamp_min(1e-6)
    return x - num / den * y


def combine_guided(preds: Tensor, batch: int, guidance_scale: float, weights: Tensor) -> tuple[Tensor, Tensor]:
    """(e_w, e_cond) from stacked predictions [cond | neg | extra_1 | ... | extra_K] of `batch` each.

    e_w = e_neg + w * (d_cond + sum_k weights[:, k] * perp(d_k, d_cond)), d = e - e_neg. With
    K = 0 this is plain CFG, e_neg + w (e_cond - e_neg).
    """
    k = preds.shape[0] // batch - 2
    if k < 0 or preds.shape[0] != batch * (k + 2) or weights.shape != (batch, k):
        raise ValueError(f"combine_guided: {preds.shape[0]} predictions, batch {batch}, weights "
                         f"{tuple(weights.shape)}: expected (2 + K) * batch predictions and (batch, K) weights")
    chunks = preds.split(batch)
    e_cond, e_neg = chunks[0], chunks[1]
    d_cond = e_cond - e_neg
    acc = d_cond
    for i, e_extra in enumerate(chunks[2:]):
        w = weights[:, i].to(preds.dtype).view(-1, *([1] * (preds.dim() - 1)))
        acc = acc + w * perpendicular_component(e_extra - e_neg, d_cond)
    return e_neg + guidance_scale * acc, e_cond


class BatchedGuidedEps:
    """`GuidedEps` of one batch of views: fixed embeddings, one prior call per `guided`."""

    def __init__(self, prior: Prior, cond_emb: Tensor, neg_emb: Tensor, null_emb: Tensor,
                 extra_embs: list[Tensor], weights: Tensor, guidance_scale: float) -> None:
        self.prior = prior
        self.batch = cond_emb.shape[0]
        self.emb = torch.cat([cond_emb, neg_emb, *extra_embs], dim=0)
        self.null_emb = null_emb
        self.weights = weights
        self.guidance_scale = float(guidance_scale)
        self.calls = 0

    def _t(self, t: int | Tensor, n: int) -> Tensor:
        tt = torch.as_tensor(t, device=self.prior.device, dtype=torch.long)
        return tt.expand(n) if tt.dim() == 0 else tt.repeat(n // tt.shape[0])

    def null(self, x: Tensor, t: int | Tensor) -> Tensor:
        self.calls += 1
        return self.prior.eps(x, self._t(t, x.shape[0]), self.null_emb[: x.shape[0]]).float()

    def guided(self, x: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[0] != self.batch:
            raise ValueError(f"guided(): x has batch {x.shape[0]}, embeddings were built for {self.batch} views")
        reps = self.emb.shape[0] // self.batch
        self.calls += 1
        preds = self.prior.eps(x.repeat(reps, *([1] * (x.dim() - 1))), self._t(t, x.shape[0] * reps), self.emb)
        return combine_guided(preds.float(), self.batch, self.guidance_scale, self.weights)


def make_guided_eps(prior: Prior, prompt: str, azimuths_deg: Sequence[float] | Tensor, negative_prompt: str = "",
                    guidance_scale: float = 7.5, perp_neg: PerpNegParams | None = None,
                    view_dependent: bool = True, front_angle_deg: float = 60.0,
                    back_angle_deg: float = 60.0) -> BatchedGuidedEps:
    """Embeddings for one batch of views -> a GuidedEps (CFG, or Perp-Neg when `perp_neg` is given).

    null = embedding of "" (inversion); neg = `negative_prompt` (CFG baseline); cond = the prompt
    with the azimuth's view suffix (CFG) or the interpolated view embeddings (Perp-Neg).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"make_guided_eps: prompt must be a non-empty string, got {prompt!r}")
    az = [float(a) for a in (azimuths_deg.tolist() if isinstance(azimuths_deg, Tensor) else azimuths_deg)]
    if not az:
        raise ValueError("make_guided_eps: azimuths_deg is empty; pass one azimuth per rendered view")
    b = len(az)
    checked = (f"{type(prior).__name__}/{prior.name}", int(prior.max_prompt_tokens), prompt)
    if checked not in _LENGTH_CHECKED:
        _LENGTH_CHECKED.add(checked)
        ntok = prior.count_tokens(prompt + ", front view")
        if ntok > prior.max_prompt_tokens:
            log.warning("prompt %r has %d tokens with its view suffix; the prior truncates at %d",
                        prompt, ntok, prior.max_prompt_tokens)
    null_emb, neg_emb = prior.embed(["", negative_prompt])
    null_b = null_emb.expand(b, *null_emb.shape)
    neg_b = neg_emb.expand(b, *neg_emb.shape)
    if perp_neg is None:
        if view_dependent:
            texts = [prompt + view_suffix(a, front_angle_deg, back_angle_deg) for a in az]
        else:
            texts = [prompt] * b
        cond = prior.embed(texts)
        return BatchedGuidedEps(prior, cond, neg_b, null_b, [], torch.zeros(b, 0), guidance_scale)
    views = {d: e for d, e in zip(VIEW_SUFFIXES, prior.embed([prompt + s for s in VIEW_SUFFIXES.values()]))}
    conds, neg1, neg2, ws = [], [], [], []
    for a in az:
        start, end, r, (n1, n2), (w1, w2) = perp_neg_view(a, perp_neg)
        conds.append(r * views[start] + (1.0 - r) * views[end])
        neg1.append(views[n1])
        neg2.append(views[n2])
        ws.append((w1, w2))
    weights = torch.tensor(ws, dtype=torch.float32, device=prior.device)
    return BatchedGuidedEps(prior, torch.stack(conds), neg_b, null_b,
                            [torch.stack(neg1), torch.stack(neg2)], weights, guidance_scale)


def make_guided_eps_from_config(prior: Prior, cfg: "PriorConfig", prompt: str,
                                azimuths_deg: Sequence[float] | Tensor) -> BatchedGuidedEps:
    """`make_guided_eps` with every constant taken from the `prior` config section."""
    pn = PerpNegParams(cfg.perp_neg_weight, cfg.perp_neg_front_decay, cfg.perp_neg_side_decay) if cfg.perp_neg else None
    w = faults.guidance_sign() * cfg.guidance_scale  # identity unless a benchmark injects distill_sign
    return make_guided_eps(prior, prompt, azimuths_deg, cfg.negative_prompt, w, pn,
                           cfg.view_dependent_prompt, cfg.front_angle_deg, cfg.back_angle_deg)


# ----------------------------------------------------------------------------------------------
# Loading by name
# ----------------------------------------------------------------------------------------------
def resolve_device(cfg: "PriorConfig", device: str | torch.device | None = None) -> torch.device:
    """The prior's device: `device` if given, else `cfg.device`; no silent CPU fallback for a real
    prior (see stages.priors.device.require_device)."""
    from stages.priors.device import require_device

    return require_device(cfg, device)


def load_prior(cfg: "PriorConfig", device: str | torch.device | None = None,
               toy: "ToyConfig | None" = None) -> Prior:
    """The prior named by `cfg.name`: stable_diffusion | toy_sd (the shipped toy diffusers dir) | toy_exact.

    `toy`: the run's toy section, from which toy_exact builds its view set (catalogue, views per
    object, cameras); pass `cfg.toy` from a run, None only for the defaults."""
    dev = resolve_device(cfg, device)
    if cfg.name == "stable_diffusion":
        from stages.priors.stable_diffusion import StableDiffusionPrior
        return StableDiffusionPrior.from_config(cfg, dev)
    if cfg.name == "toy_sd":
        from stages.priors.stable_diffusion import StableDiffusionPrior, toy_sd_model
        return StableDiffusionPrior.from_config(cfg, dev, model=toy_sd_model(cfg.model), name="toy_sd")
    if cfg.name == "toy_exact":
        from stages.priors import toy_exact
        return toy_exact.load(cfg, dev, toy)
    raise ValueError(f"prior.name={cfg.name!r} is unknown; use one of stable_diffusion, toy_sd, toy_exact")
