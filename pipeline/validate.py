"""Names a config refers to, checked against the registries that define them.

Why here: the config layer checks types and bounds only, because it may not import `stages/`; the
valid method, prior, init and executor names are the keys of their registries (`stages.methods.METHODS`,
`stages.priors.registry.PRIORS`, `stages.init.INIT_METHODS`, `pipeline.executors.EXECUTORS`), so a name added there is valid
without touching the config. The orchestrator calls `check_names` wherever it loads a config
for use (the CLI, `run_batch`, a prompt row's overrides).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from common.config import Config, ConfigError


def _methods() -> list[str]:
    from stages.methods import method_names

    return method_names()


def _priors() -> list[str]:
    from stages.priors.registry import prior_names

    return prior_names()


def _executors() -> list[str]:
    from pipeline.executors import executor_names

    return executor_names()


def _inits() -> list[str]:
    from stages.init import INIT_METHODS

    return sorted(INIT_METHODS)


# config key -> (what the name is, the registered names)
REGISTERED: dict[str, tuple[str, Callable[[], list[str]]]] = {
    "generate.method": ("distillation method", _methods),
    "prior.name": ("prior", _priors),
    "init.method": ("init method", _inits),
    "pipeline.executor": ("executor", _executors),
}


def _value(cfg: Config, key: str) -> object:
    node: object = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _where(cfg: Config, key: str, value: object) -> str:
    """Where the value came from, in the config layer's words: the --set naming the key, else the files."""
    parts = [s for s in (cfg.source or "").split(";") if s]
    if any(p.startswith("--set ") and f"{key}=" in p for p in parts):
        return f"--set {key}={value}"
    return " <- ".join(Path(p).name for p in parts if not p.startswith("--set ")) or "<defaults>"


def check_names(cfg: Config, source: str | None = None) -> Config:
    """`cfg` unchanged if every registered name it uses exists, else ConfigError (one line: the key,
    the bad value, a did-you-mean, the registered names). `source` prefixes the message (default:
    where the config came from)."""
    for key, (what, names_of) in REGISTERED.items():
        value = _value(cfg, key)
        names = names_of()
        if value in names:
            continue
        near = difflib.get_close_matches(str(value), names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        where = source if source is not None else _where(cfg, key, value)
        raise ConfigError(f"{where}: {key}: {value!r} is not a registered {what}{hint}; "
                          f"registered: {', '.join(names)}")
    from stages.priors.registry import prior_spec

    try:
        prior_spec(cfg.prior.name).parse_options(cfg.prior)
    except (TypeError, ValueError) as e:  # the options class's own checks say what is wrong
        raise ConfigError(f"{source if source is not None else _where(cfg, 'prior.options', cfg.prior.options)}: "
                          f"{e}") from None
    from stages.export.run_mesh import check as check_mesh

    try:
        check_mesh(cfg.pipeline.mesh, cfg.pipeline.mesh_options)
    except ConfigError as e:
        raise ConfigError(f"{source if source is not None else _where(cfg, 'pipeline.mesh', cfg.pipeline.mesh)}: "
                          f"{e}") from None
    return cfg
