"""Does a toy prior generalise, or look up its training views? Measures on 32x32 rgb samples.

Why: issue 3 asks that the toy SD "generalise smoothly (it is not a lookup table)". Two things
tell a generalising model from a lookup table: (1) prompts that combine known words in a way the
catalogue never shows ("a white cube": white and cube are both trained, the pair is not) get the
named colour and shape; (2) samples are not copies of training views. The helpers here read a
sample's colour (majority of foreground pixels by nearest catalogue colour), its shape (best
silhouette IoU against ground-truth views of each primitive) and its novelty (distance to the
nearest training view in units of the training views' own nearest-neighbour spacing).

Images are (B, 3, H, W) float rgb in [0, 1] on the toy world's black background.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from stages.toyworld.catalogue import PRIMITIVES, Catalogue, CatalogueError
from stages.toyworld.views import ObjectViews

# max channel above this = object. The background is black; the toy SD leaves noise up to ~0.4 in
# it (90th percentile of corner pixels 0.39 at 3000 steps); the darkest catalogue colour's brightest
# channel is 0.85, so an edge pixel counts once it is ~40% covered. Nearest-shape accuracy on
# held-out renders is flat in it (0.952 at 0.15, 0.953 at 0.35, 0.945 at 0.5; 256 reference views per
# object); on toy SD samples of "a blue sphere" 0.15 lets the speckle in (2/8 spheres vs 8/8 at 0.35).
FOREGROUND_THRESHOLD = 0.35


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) rgb images, got shape {tuple(images.shape)}")


def foreground_mask(images: Tensor, threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """(B, H, W) bool: pixels whose brightest channel exceeds `threshold` (background is black)."""
    _check_images(images)
    return images.amax(dim=1) > threshold


def catalogue_colours(catalogue: Catalogue) -> dict[str, Tensor]:
    """The named colours (`colors:` of the catalogue's YAML), name -> (3,) float rgb."""
    try:
        raw = (yaml.safe_load(Path(catalogue.source).read_text()) or {}).get("colors") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"cannot read the named colours of {catalogue.source!r}: {exc}") from exc
    if not raw:
        raise CatalogueError(f"{catalogue.source}: no `colors:` section; name the colours to classify by")
    return {str(k): torch.tensor([float(x) for x in v]) for k, v in raw.items()}


def prompt_attributes(prompt: str, colours: dict[str, Tensor]) -> tuple[str | None, str | None]:
    """The colour name and primitive a prompt asks for ("a white cube, front view" -> white, cube);
    None where it names none or more than one (two-coloured objects, the mushroom)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    cols = {w for w in words if w in colours}
    shapes = {w for w in words if w in PRIMITIVES}
    return (cols.pop() if len(cols) == 1 else None), (shapes.pop() if len(shapes) == 1 else None)


def _chroma(rgb: Tensor) -> Tensor:
    """rgb / max channel: invariant to the darkening of partly transparent edge pixels."""
    return rgb / rgb.amax(dim=-1, keepdim=True).clamp_min(1e-6)


def dominant_colour(images: Tensor, colours: dict[str, Tensor],
                    threshold: float = FOREGROUND_THRESHOLD) -> tuple[list[str], Tensor]:
    """Per image: the named colour most foreground pixels are nearest to (by chroma), and the mean
    rgb of those pixels (B, 3). An image without foreground gets "none" and a zero colour."""
    _check_images(images)
    names = list(colours)
    ref = _chroma(torch.stack([colours[n] for n in names]).float())
    mask = foreground_mask(images, threshold)
    px = images.permute(0, 2, 3, 1).float()  # (B, H, W, 3)
    label = torch.cdist(_chroma(px).reshape(-1, 3), ref).argmin(dim=1).reshape(mask.shape)
    out_names, out_rgb = [], torch.zeros(images.shape[0], 3)
    for b in range(images.shape[0]):
        if not mask[b].any():
            out_names.append("none")
            continue
        k = int(torch.bincount(label[b][mask[b]], minlength=len(names)).argmax())
        out_names.append(names[k])
        out_rgb[b] = px[b][mask[b] & (label[b] == k)].mean(dim=0)
    return out_names, out_rgb


def shape_silhouettes(views: list[ObjectViews], catalogue: Catalogue,
                      threshold: float = FOREGROUND_THRESHOLD) -> dict[str, Tensor]:
    """Ground-truth silhouettes per primitive, (N, H*W) bool: the views of every one-part object
    (all colours and patterns; a silhouette does not depend on colour). Multi-part objects are
    left out: they are no single shape."""
    by_shape: dict[str, list[Tensor]] = {}
    for v in views:
        obj = catalogue.get(v.name)
        if len(obj.parts) == 1:
            m = foreground_mask(v.chw(), threshold).reshape(len(v.images), -1)
            by_shape.setdefault(obj.parts[0].primitive, []).append(m)
    if not by_shape:
        raise ValueError("shape_silhouettes: no one-part objects among the views; pass catalogue_views(...)")
    return {k: torch.cat(m) for k, m in by_shape.items()}


def silhouette_iou(masks: Tensor, reference: Tensor) -> Tensor:
    """(B, N) IoU between flattened bool masks (B, P) and reference masks (N, P)."""
    a, b = masks.float(), reference.float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
    return inter / union.clamp_min(1.0)


def nearest_shape(images: Tensor, silhouettes: dict[str, Tensor],
                  threshold: float = FOREGROUND_THRESHOLD) -> tuple[list[str], Tensor]:
    """Per image: the primitive whose best-matching ground-truth silhouette has the highest IoU with
    the image's foreground, and that IoU (B,)."""
    m = foreground_mask(images, threshold).reshape(images.shape[0], -1)
    names = list(silhouettes)
    best = torch.stack([silhouette_iou(m, silhouettes[n]).amax(dim=1) for n in names], dim=1)
    iou, k = best.max(dim=1)
    return [names[int(i)] for i in k], iou


@dataclass
class TrainingSet:
    """Flattened training views (float64) with, per view, its object and the object's spacing."""

    x: Tensor  # (N, D)
    owner: Tensor  # (N,) object index into `names`
    names: list[str]
    spacing: Tensor  # (len(names),) median nearest-neighbour distance between the object's views


def training_set(views: list[ObjectViews]) -> TrainingSet:
    """Why nearest-neighbour spacing (and not the median over all pairs): it is how far a training
    view is from the closest other view of its object, i.e. the distance a fresh view of a known
    object typically has from the training set. A sample at ratio ~1 is as new as an unseen view;
    a lookup table sits at ~0."""
    xs, owner, spacing = [], [], []
    for j, v in enumerate(views):
        x = v.chw().reshape(len(v.images), -1).double()
        if len(x) < 2:
            raise ValueError(f"training_set: object {v.name} has {len(x)} view; need >= 2 for a spacing")
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        spacing.append(d.min(dim=1).values.median())
        xs.append(x)
        owner.append(torch.full((len(x),), j, dtype=torch.long))
    return TrainingSet(torch.cat(xs), torch.cat(owner), [v.name for v in views], torch.stack(spacing))


def novelty(images: Tensor, train: TrainingSet) -> tuple[Tensor, Tensor]:
    """Per image: distance to the nearest training view divided by that view's object's spacing
    (B,), and the nearest view's object index (B,). ~0: a copy of a training view."""
    _check_images(images)
    x = images.reshape(images.shape[0], -1).double()
    if x.shape[1] != train.x.shape[1]:
        raise ValueError(f"novelty: images have {x.shape[1]} values each, training views {train.x.shape[1]}; "
                         "use the same resolution")
    d, i = torch.cdist(x, train.x).min(dim=1)
    owner = train.owner[i]
    return d / train.spacing[owner], owner
