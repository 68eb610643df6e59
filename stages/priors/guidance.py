"""Guided noise: CFG and Perp-Neg as one weighting over one batched prior prediction.

Everything method-specific (CFG vs Perp-Neg) lives in `make_guided_eps`, which turns a prior, a
prompt and the batch's camera azimuths into a `kernels.distill.GuidedEps`: ONE batched `eps`
call over [cond, neg, extra negatives] and a per-view weighting of the predictions. CFG is the
special case with no extra negatives, so both share one code path.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from stages import faults
from stages.priors.protocol import (Conditioning, Prior, cond_cat, cond_expand, cond_head, cond_lerp,
                                    cond_row, cond_rows, cond_stack)
from stages.view_words import VIEW_SUFFIXES, view_suffix, wrap_azimuth

if TYPE_CHECKING:  # pragma: no cover
    from common.config import PriorConfig

log = logging.getLogger(__name__)

# prompts whose length was checked, per prior kind: the tokenizer runs once per prompt and process,
# not on every generate iteration (and the truncation warning is given once)
_LENGTH_CHECKED: set[tuple[str, int, str]] = set()
# per prior: torch.arange(T) on its device; a timestep is an index into it (a view), so no UNet
# call copies its timestep from the host
_STEPS: "weakref.WeakKeyDictionary[object, Tensor]" = weakref.WeakKeyDictionary()


def _steps(prior: Prior) -> Tensor:
    steps = _STEPS.get(prior)
    if steps is None:
        steps = torch.arange(len(prior.alphas_cumprod), device=prior.device, dtype=torch.long)
        _STEPS[prior] = steps
    return steps


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
    """`GuidedEps` of one batch of views: fixed conditioning (opaque: the prior's own), one prior call
    per `guided`. `cameras`: the batch's cameras, passed to a camera-conditioned prior's `eps`."""

    def __init__(self, prior: Prior, cond_emb: Conditioning, neg_emb: Conditioning, null_emb: Conditioning,
                 extra_embs: list[Conditioning], weights: Tensor, guidance_scale: float,
                 cameras: Any = None) -> None:
        self.prior = prior
        self.batch = cond_rows(cond_emb)
        self.emb = cond_cat([cond_emb, neg_emb, *extra_embs])
        self.null_emb = null_emb
        self.weights = weights
        self.guidance_scale = float(guidance_scale)
        self.calls = 0
        self._extra = {"cameras": cameras} if getattr(prior, "camera_conditioned", False) else {}
        if self._extra and cameras is None:
            raise ValueError(f"prior {prior.name!r} is conditioned on the cameras; pass the batch's cameras")

    def _t(self, t: int | Tensor, n: int) -> Tensor:
        tt = _steps(self.prior)[t] if isinstance(t, int) else torch.as_tensor(t, device=self.prior.device,
                                                                               dtype=torch.long)
        return tt.expand(n) if tt.dim() == 0 else tt.repeat(n // tt.shape[0])

    def null(self, x: Tensor, t: int | Tensor) -> Tensor:
        self.calls += 1
        return self.prior.eps(x, self._t(t, x.shape[0]), cond_head(self.null_emb, x.shape[0]), **self._extra).float()

    def guided(self, x: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[0] != self.batch:
            raise ValueError(f"guided(): x has batch {x.shape[0]}, embeddings were built for {self.batch} views")
        reps = cond_rows(self.emb) // self.batch
        self.calls += 1
        preds = self.prior.eps(x.repeat(reps, *([1] * (x.dim() - 1))), self._t(t, x.shape[0] * reps), self.emb,
                               **self._extra)
        return combine_guided(preds.float(), self.batch, self.guidance_scale, self.weights)


def perp_neg_weights(azimuths_deg: Sequence[float], p: PerpNegParams) -> list[tuple[float, float]]:
    """Per view, the two Perp-Neg negative weights (host floats)."""
    return [perp_neg_view(a, p)[4] for a in azimuths_deg]


def perp_neg_params(cfg: "PriorConfig") -> PerpNegParams | None:
    """Perp-Neg's numbers from the `prior` section, or None for CFG."""
    return PerpNegParams(cfg.perp_neg_weight, cfg.perp_neg_front_decay, cfg.perp_neg_side_decay) if cfg.perp_neg else None


def warm_embeddings(prior: Prior, cfg: "PriorConfig", prompt: str) -> None:
    """Embed every prompt `make_guided_eps_from_config` can ask for (null, negative, the view
    prompts), so the text encoder runs once before the loop, not in whichever iteration first
    sees a view."""
    texts = ["", cfg.negative_prompt]
    if cfg.perp_neg or cfg.view_dependent_prompt:
        texts += [prompt + s for s in VIEW_SUFFIXES.values()]
    else:
        texts.append(prompt)
    prior.embed(texts)


def make_guided_eps(prior: Prior, prompt: str, azimuths_deg: Sequence[float] | Tensor, negative_prompt: str = "",
                    guidance_scale: float = 7.5, perp_neg: PerpNegParams | None = None,
                    view_dependent: bool = True, front_angle_deg: float = 60.0,
                    back_angle_deg: float = 60.0, weights: Tensor | None = None,
                    cameras: Any = None) -> BatchedGuidedEps:
    """Embeddings for one batch of views -> a GuidedEps (CFG, or Perp-Neg when `perp_neg` is given).

    null = embedding of "" (inversion); neg = `negative_prompt` (CFG baseline); cond = the prompt
    with the azimuth's view suffix (CFG) or the interpolated view embeddings (Perp-Neg).
    `weights`: Perp-Neg's (B, 2) view weights already on the prior's device (the generate loop
    draws them ahead with its cameras); else they are built here from `azimuths_deg`.
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
    pair = prior.embed(["", negative_prompt])
    null_b = cond_expand(cond_row(pair, 0), b)
    neg_b = cond_expand(cond_row(pair, 1), b)
    if perp_neg is None:
        if view_dependent:
            texts = [prompt + view_suffix(a, front_angle_deg, back_angle_deg) for a in az]
        else:
            texts = [prompt] * b
        cond = prior.embed(texts)
        return BatchedGuidedEps(prior, cond, neg_b, null_b, [], torch.zeros(b, 0), guidance_scale, cameras)
    embs = prior.embed([prompt + s for s in VIEW_SUFFIXES.values()])
    views = {d: cond_row(embs, i) for i, d in enumerate(VIEW_SUFFIXES)}
    conds, neg1, neg2, ws = [], [], [], []
    for a in az:
        start, end, r, (n1, n2), (w1, w2) = perp_neg_view(a, perp_neg)
        conds.append(cond_lerp(views[start], views[end], r))
        neg1.append(views[n1])
        neg2.append(views[n2])
        ws.append((w1, w2))
    if weights is None:
        weights = torch.tensor(ws, dtype=torch.float32, device=prior.device)
    return BatchedGuidedEps(prior, cond_stack(conds), neg_b, null_b,
                            [cond_stack(neg1), cond_stack(neg2)], weights, guidance_scale, cameras)


def guidance_keys(cfg: "PriorConfig") -> tuple[str, ...]:
    """The `prior` keys the guidance (and the render size it is fed) reads for every prior."""
    keys = ("prior.name", "prior.image_size", "prior.guidance_scale", "prior.negative_prompt",
            "prior.view_dependent_prompt", "prior.front_angle_deg", "prior.back_angle_deg", "prior.perp_neg")
    if cfg.perp_neg:
        keys += ("prior.perp_neg_weight", "prior.perp_neg_front_decay", "prior.perp_neg_side_decay")
    return keys


def make_guided_eps_from_config(prior: Prior, cfg: "PriorConfig", prompt: str,
                                azimuths_deg: Sequence[float] | Tensor,
                                weights: Tensor | None = None, cameras: Any = None) -> BatchedGuidedEps:
    """`make_guided_eps` with every constant taken from the `prior` config section."""
    pn = perp_neg_params(cfg)
    w = faults.guidance_sign() * cfg.guidance_scale  # identity unless a benchmark injects distill_sign
    return make_guided_eps(prior, prompt, azimuths_deg, cfg.negative_prompt, w, pn,
                           cfg.view_dependent_prompt, cfg.front_angle_deg, cfg.back_angle_deg,
                           weights if pn is not None else None, cameras)
