"""What an asset id hashes besides prompt and seed: the generation keys the run's method, prior and
init read, and the content of what generation reads from disk.

Why: hashing whole config sections made an SDS asset's id depend on `generate.sctd.*`, and adding
any field to any section re-keyed every existing asset (an upgrade regenerated a whole run). Each
method, prior and init declares the keys it reads (`stages.kernel_params.METHOD_KEYS` / `LOOP_KEYS`,
`stages.priors.registry.PRIOR_KEYS` with `stages.priors.guidance.guidance_keys`,
`stages.init.INIT_KEYS`); `common.config.id_settings` turns them into version 1's settings shape,
so a key nobody reads, or a new key at its neutral value, leaves ids where they were. A name
registered without a declaration hashes its whole sections (over-inclusion costs a regeneration,
under-inclusion would mix assets). tests/test_asset_identity.py freezes the ids of the shipped
configs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.config import ConfigError, expand_keys, id_settings, settings_digest

if TYPE_CHECKING:  # pragma: no cover
    from common.config import Config

_WHOLE = {"method": ("generate.*",), "prior": ("prior.*",), "init": ("init.*",)}


def generation_keys(cfg: "Config") -> set[str]:
    """The leaf keys of `cfg` that generation reads under its method, prior and init."""
    from stages.init import INIT_KEYS
    from stages.kernel_params import LOOP_KEYS, METHOD_KEYS
    from stages.priors.guidance import guidance_keys
    from stages.priors.registry import PRIOR_KEYS

    patterns = list(LOOP_KEYS) + list(guidance_keys(cfg.prior))
    patterns += METHOD_KEYS.get(cfg.generate.method, _WHOLE["method"])
    patterns += PRIOR_KEYS.get(cfg.prior.name, _WHOLE["prior"])
    patterns += INIT_KEYS.get(cfg.init.method, _WHOLE["init"])
    return expand_keys(cfg, patterns)


def generation_settings(cfg: "Config") -> dict:
    """The settings an asset id hashes (see the module docstring)."""
    return id_settings(cfg, generation_keys(cfg))


def generation_hash(cfg: "Config", inputs: dict[str, Any] | None = None) -> str:
    """Hash of what determines a generated asset: `generation_settings` plus the content identity
    of what generation reads (stages.priors.identity.generation_inputs: prior weights, toy
    catalogue; computed here when `inputs` is None). An asset id is (normalised prompt, seed, this)."""
    if inputs is None:
        from stages.priors.identity import generation_inputs

        try:
            inputs = generation_inputs(cfg)
        except ValueError as e:  # e.g. prior.model names no shipped toy SD nor a directory
            raise ConfigError(str(e)) from None
    return settings_digest({"settings": generation_settings(cfg), "inputs": inputs})
