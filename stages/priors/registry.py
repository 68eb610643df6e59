"""Priors by name: `prior.name` -> a `PriorSpec`, the one list of valid prior names.

A spec holds everything the pipeline needs to know about a prior without branching on its name:
how to load it, the config keys it reads (asset ids), the content identity of its weights, its
prompt-token limit, whether it needs a GPU, whether it reads the toy cache, and the class of its
own options (`prior.options`). `load_prior` looks the name up; `tokens.py`, `device.py`,
`identity.py`, `pipeline/preflight.py` and `stages/generation_id.py` ask the spec. Each loader
imports its implementation lazily, so listing the names loads no model code, and no implementation
imports this module (no circle). A new prior: write its module against
`stages.priors.protocol.Prior` and call `register_prior(PriorSpec(...))` (`PRIORS` is a
`common.plugins.Registry`, the one registry implementation; a plugin file:
common/plugins.py: `SCTD3D_PLUGINS` or `pipeline.plugins`; tests/plugins/camera_prior.py is one, conditioned on the cameras).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch

from common.plugins import Registry
from stages.priors.device import resolve_device
from stages.priors.protocol import Prior

if TYPE_CHECKING:  # pragma: no cover
    from common.config import Config, PriorConfig, ToyConfig

Loader = Callable[["PriorConfig", torch.device, "ToyConfig | None"], Prior]
TokenLimit = Callable[["PriorConfig"], tuple[Optional[Callable[[str], int]], Optional[int]]]


@dataclass(frozen=True)
class PriorSpec:
    name: str
    load: Loader
    # the config keys it reads besides the guidance's (stages.priors.guidance.guidance_keys): asset ids
    config_keys: Union[tuple[str, ...], Callable[["PriorConfig"], tuple[str, ...]]] = ()
    identity: Optional[Callable[["Config"], dict]] = None   # content identity of its weights (asset ids)
    token_limit: Optional[TokenLimit] = None   # (count_tokens, max_tokens) from its tokenizer; None: none
    lowercases: Optional[Callable[["PriorConfig"], bool]] = None  # its tokenizer ignores case (None: no)
    needs_gpu: bool = False      # device auto never falls back to the CPU silently (prior.allow_cpu does)
    uses_toy_cache: bool = False  # reads / writes the on-disk toy cache (preflight checks it)
    options: Optional[type] = None  # dataclass of its own settings, given as `prior.options: {...}`

    def keys(self, cfg: "PriorConfig") -> tuple[str, ...]:
        keys = self.config_keys(cfg) if callable(self.config_keys) else tuple(self.config_keys)
        return keys + ("prior.options",)  # read by every prior: parsed, or refused when not empty

    def parse_options(self, cfg: "PriorConfig") -> Any:
        """`prior.options` as this prior's options class (ValueError naming a bad key), or None."""
        raw = dict(getattr(cfg, "options", None) or {})
        if self.options is None:
            if raw:
                raise ValueError(f"prior.options: prior {self.name!r} takes no options, got {sorted(raw)}")
            return None
        fields = {f.name for f in dataclasses.fields(self.options)}
        bad = sorted(set(raw) - fields)
        if bad:
            raise ValueError(f"prior.options: {bad} are not options of prior {self.name!r}; its options: "
                             f"{sorted(fields)}")
        return self.options(**raw)


PRIORS: Registry[PriorSpec] = Registry(
    "prior", "prior.name",
    unknown=lambda name, names: f"prior.name={name!r} is unknown; use one of {', '.join(sorted(names))}")


def register_prior(spec: PriorSpec, *, replace: bool = False) -> PriorSpec:
    """Add `spec` under `spec.name` (a name another module registered: one-line PluginError)."""
    return PRIORS.register(spec, replace=replace)


def prior_names() -> list[str]:
    """The registered prior names (sorted), for validation and error messages."""
    return sorted(PRIORS.names())


def prior_spec(name: str) -> PriorSpec:
    """UnknownComponent (a ValueError, one line naming the choices) for an unregistered `name`."""
    return PRIORS.get(name)


def load_prior(cfg: "PriorConfig", device: str | torch.device | None = None,
               toy: "ToyConfig | None" = None) -> Prior:
    """The prior named by `cfg.name` on `device` (else `cfg.device`; no silent CPU fallback for a
    prior that needs a GPU, see `stages.priors.device.require_device`).

    `toy`: the run's toy section, from which toy_exact builds its view set (catalogue, views per
    object, cameras); pass `cfg.toy` from a run, None only for the defaults."""
    return prior_spec(cfg.name).load(cfg, require_device(cfg, device), toy)


def require_device(cfg: "PriorConfig", device: str | torch.device | None = None) -> torch.device:
    """The device the prior `cfg` names runs on (stages.priors.device.resolve_device with its spec's
    `needs_gpu`); DeviceError instead of a silent CPU fallback. The run's start-up check."""
    spec = PRIORS.get(cfg.name, None)
    return resolve_device(cfg, device, needs_gpu=bool(spec and spec.needs_gpu))


def token_limit(cfg: "PriorConfig") -> tuple[Optional[Callable[[str], int]], Optional[int]]:
    """(count_tokens, max_tokens) of the prior `cfg` names (its spec's `token_limit`), or (None, None)
    when it has no tokenizer or it cannot be read here (prompts still get the character cap)."""
    spec = prior_spec(cfg.name)
    return spec.token_limit(cfg) if spec.token_limit is not None else (None, None)


def prompt_lowercased(cfg: "PriorConfig") -> bool:
    """Whether the prior `cfg` names sees a prompt and its lowercase as the same text (then they
    are one asset: pipeline.inputs); its spec's `lowercases`, False for a prior without one."""
    spec = PRIORS.get(cfg.name, None)
    if spec is None or spec.lowercases is None:
        return False
    try:
        return bool(spec.lowercases(cfg))
    except ValueError:  # e.g. an unknown toy SD name: the run's config check names it
        return False


def prior_identity(cfg: "Config") -> dict:
    """The content identity of the prior `cfg.prior` names (its spec's `identity`, see
    stages/priors/identity.py); a prior without one is identified by its settings alone."""
    spec = prior_spec(cfg.prior.name)
    return spec.identity(cfg) if spec.identity is not None else {"kind": "settings", "name": cfg.prior.name}


# ------------------------------------------------------------------------------------------------
# the shipped priors
# ------------------------------------------------------------------------------------------------
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


def _sd_identity(cfg: "Config") -> dict:
    from stages.priors.identity import model_identity

    return model_identity(cfg.prior.model, cfg.prior.revision, cfg.prior.single_file_config)


def _toy_sd_identity(cfg: "Config") -> dict:
    from stages.priors.identity import model_identity
    from stages.priors.stable_diffusion import toy_sd_model

    return model_identity(toy_sd_model(cfg.prior.model))


def _toy_exact_identity(cfg: "Config") -> dict:
    from stages.priors.identity import catalogue_digest

    return {"kind": "toy_exact", "catalogue_sha256": catalogue_digest(cfg.toy.catalogue)}


def _sd_tokens(cfg: "PriorConfig"):
    from stages.priors.tokens import clip_token_limit

    return clip_token_limit(cfg.model, cfg.revision)


def _sd_lowercases(cfg: "PriorConfig") -> bool:
    from stages.priors.tokens import clip_lowercases

    return clip_lowercases(cfg.model, cfg.revision)


def _toy_sd_lowercases(cfg: "PriorConfig") -> bool:
    from stages.priors.stable_diffusion import toy_sd_model
    from stages.priors.tokens import clip_lowercases

    return clip_lowercases(toy_sd_model(cfg.model), "", must_exist=True)


def _catalogue_lowercases(cfg: "PriorConfig") -> bool:
    from stages.priors.tokens import lowercases
    from stages.toyworld.catalogue import prompt_key

    return lowercases(prompt_key)


def _toy_sd_tokens(cfg: "PriorConfig"):
    from stages.priors.stable_diffusion import toy_sd_model
    from stages.priors.tokens import clip_token_limit

    return clip_token_limit(toy_sd_model(cfg.model), "", must_exist=True)


register_prior(PriorSpec(
    "stable_diffusion", _stable_diffusion,
    config_keys=("prior.model", "prior.revision", "prior.dtype", "prior.channels_last",
                 "prior.single_file_config"),
    identity=_sd_identity, token_limit=_sd_tokens, lowercases=_sd_lowercases, needs_gpu=True))
register_prior(PriorSpec(
    "toy_sd", _toy_sd, config_keys=("prior.model", "prior.dtype", "prior.channels_last"),
    identity=_toy_sd_identity, token_limit=_toy_sd_tokens, lowercases=_toy_sd_lowercases))
register_prior(PriorSpec(
    "toy_exact", _toy_exact,
    config_keys=("toy.catalogue", "toy.views_per_object", "toy.camera_radius_range", "toy.camera_fovy_range"),
    identity=_toy_exact_identity, lowercases=_catalogue_lowercases, uses_toy_cache=True))

