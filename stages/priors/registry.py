"""Priors by name: `prior.name` -> a loader, the one list of valid prior names.

Like `kernels.distill.METHODS`: `load_prior` looks the name up and never branches on it, and
the config is validated against `PRIORS` (`pipeline.validate`). Each loader imports its
implementation lazily, so listing the names loads no model code, and no implementation
imports this module (no circle). A new prior: write its module against
`stages.priors.protocol.Prior` and add one entry here (tests add fakes with monkeypatch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from stages.priors.device import require_device
from stages.priors.protocol import Prior

if TYPE_CHECKING:  # pragma: no cover
    from common.config import PriorConfig, ToyConfig

Loader = Callable[["PriorConfig", torch.device, "ToyConfig | None"], Prior]


def _stable_diffusion(cfg: "PriorConfig", device: torch.device, toy: "ToyConfig | None") -> Prior:
    """Any SD 1.x / 2.x (`prior.model`: hub id, diffusers directory or one .safetensors file)."""
    from stages.priors.stable_diffusion import StableDiffusionPrior

    return StableDiffusionPrior.from_config(cfg, device)


def _toy_sd(cfg: "PriorConfig", device: torch.device, toy: "ToyConfig | None") -> Prior:
    """The shipped toy SD (diffusers dir), loaded by the Stable Diffusion code."""
    from stages.priors.stable_diffusion import StableDiffusionPrior, toy_sd_model

    return StableDiffusionPrior.from_config(cfg, device, model=toy_sd_model(cfg.model), name="toy_sd")


def _toy_exact(cfg: "PriorConfig", device: torch.device, toy: "ToyConfig | None") -> Prior:
    """The Bayes-optimal denoiser of the toy views (built from the run's `toy` section)."""
    from stages.priors import toy_exact

    return toy_exact.load(cfg, device, toy)


PRIORS: dict[str, Loader] = {
    "stable_diffusion": _stable_diffusion,
    "toy_sd": _toy_sd,
    "toy_exact": _toy_exact,
}


# the config keys each prior reads besides the guidance's (stages.priors.guidance.guidance_keys);
# stages.generation_id hashes exactly these into asset ids
PRIOR_KEYS: dict[str, tuple[str, ...]] = {
    "stable_diffusion": ("prior.model", "prior.revision", "prior.dtype", "prior.channels_last",
                         "prior.single_file_config"),
    "toy_sd": ("prior.model", "prior.dtype", "prior.channels_last"),
    "toy_exact": ("toy.catalogue", "toy.views_per_object", "toy.camera_radius_range", "toy.camera_fovy_range"),
}


def prior_names() -> list[str]:
    """The registered prior names (sorted), for validation and error messages."""
    return sorted(PRIORS)


def load_prior(cfg: "PriorConfig", device: str | torch.device | None = None,
               toy: "ToyConfig | None" = None) -> Prior:
    """The prior named by `cfg.name` on `device` (else `cfg.device`; no silent CPU fallback for a
    real prior, see `stages.priors.device.require_device`).

    `toy`: the run's toy section, from which toy_exact builds its view set (catalogue, views per
    object, cameras); pass `cfg.toy` from a run, None only for the defaults."""
    loader = PRIORS.get(cfg.name)
    if loader is None:
        raise ValueError(f"prior.name={cfg.name!r} is unknown; use one of {', '.join(prior_names())}")
    return loader(cfg, require_device(cfg, device), toy)
