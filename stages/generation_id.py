"""What an asset id hashes besides prompt and seed: the generation keys the run's method, prior and
init read, and the content of what generation reads from disk.

Why: hashing whole config sections made an SDS asset's id depend on `generate.sctd.*`, and adding
any field to any section re-keyed every existing asset (an upgrade regenerated a whole run). Each
method, prior and init declares the keys it reads (`stages.methods.MethodSpec.config_keys` with
`stages.kernel_params.LOOP_KEYS`,
`stages.priors.registry.PriorSpec.config_keys` with `stages.priors.guidance.guidance_keys`,
`stages.init.INIT_KEYS`); `common.config.id_settings` turns them into version 1's settings shape,
so a key nobody reads, or a new key at its neutral value, leaves ids where they were. A name
registered without a declaration hashes its whole sections (over-inclusion costs a regeneration,
under-inclusion would mix assets). tests/test_asset_identity.py freezes the ids of the shipped
configs.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any, Iterator

from common.config import ConfigError, expand_keys, id_settings, settings_digest

if TYPE_CHECKING:  # pragma: no cover
    from common.config import Config

_WHOLE = {"method": ("generate.*",), "prior": ("prior.*",), "init": ("init.*",)}
# the hash the driver computed for the asset this context generates (see `driver_hash`)
_GIVEN: contextvars.ContextVar[str] = contextvars.ContextVar("generation_hash", default="")


@contextlib.contextmanager
def driver_hash(value: str) -> Iterator[None]:
    """Inside this block `generation_hash` is `value`: the hash the driver computed when it made the
    asset id. Why: a worker computing its own could differ from the driver's (another Hugging Face
    cache resolving a hub id to another commit, or none), and the asset's meta.json would then not
    match its id (a re-run would regenerate it). `pipeline.asset.run_stages` wraps generation."""
    token = _GIVEN.set(value)
    try:
        yield
    finally:
        _GIVEN.reset(token)


def generation_keys(cfg: "Config") -> set[str]:
    """The leaf keys of `cfg` that generation reads under its method, prior and init."""
    from stages.init import INIT_KEYS
    from stages.kernel_params import LOOP_KEYS
    from stages.methods import METHODS
    from stages.priors.guidance import guidance_keys
    from stages.priors.registry import PRIORS

    patterns = list(LOOP_KEYS) + list(guidance_keys(cfg.prior))
    method = METHODS.get(cfg.generate.method, None)
    patterns += method.config_keys if method is not None else _WHOLE["method"]
    prior = PRIORS.get(cfg.prior.name, None)
    patterns += prior.keys(cfg.prior) if prior is not None else _WHOLE["prior"]
    patterns += INIT_KEYS.get(cfg.init.method, _WHOLE["init"])
    return expand_keys(cfg, patterns)


def generation_settings(cfg: "Config") -> dict:
    """The settings an asset id hashes (see the module docstring)."""
    return id_settings(cfg, generation_keys(cfg))


def generation_inputs(cfg: "Config") -> dict[str, Any]:
    """Content identity of everything a generation reads besides its settings: the prior (its
    spec's identity: weights by content, see stages/priors/identity.py), and the toy catalogue
    when `init.method=toy_shape` draws the initial shape from it."""
    from stages.priors.identity import catalogue_digest
    from stages.priors.registry import prior_identity

    out: dict[str, Any] = {"prior": prior_identity(cfg)}
    if cfg.init.method == "toy_shape":
        out["toy_shape_catalogue_sha256"] = catalogue_digest(cfg.toy.catalogue)
    return out


def generation_hash(cfg: "Config", inputs: dict[str, Any] | None = None) -> str:
    """Hash of what determines a generated asset: `generation_settings` plus the content identity
    of what generation reads (`generation_inputs`: prior weights, toy catalogue; computed here
    when `inputs` is None). An asset id is (normalised prompt, seed, this)."""
    if inputs is None and _GIVEN.get():
        return _GIVEN.get()
    if inputs is None:
        try:
            inputs = generation_inputs(cfg)
        except ValueError as e:  # e.g. prior.model names no shipped toy SD nor a directory
            raise ConfigError(str(e)) from None
    return settings_digest({"settings": generation_settings(cfg), "inputs": inputs})
