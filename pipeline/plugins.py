"""Plugins: modules imported before a run so that they register methods, priors, inits, executors
or export formats (`pipeline.plugins` in the config, e.g. `--set pipeline.plugins=[mypkg.sctd3d]`).

Why: a new component is one file that calls its registry (`pipeline.executors.register_executor`,
`stages.priors.registry.register_prior`, ...); naming it here is all it takes to use it, with no
production file edited. Each entry is a module name (importable where the run and its workers
run) or a path to a `.py` file. Every process that runs work imports them: the driver (the CLI,
`run_batch`) and each worker before its first asset (`pipeline.asset.process_asset`). The config
is the user's own (prompt rows may not set `pipeline.*`), so naming code to import is theirs too.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Iterable

from common.config import ConfigError

log = logging.getLogger(__name__)

_LOADED: dict[str, object] = {}


def _module_name(path: Path) -> str:
    return "sctd3d_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))


def load_plugins(names: Iterable[str]) -> None:
    """Import each plugin once per process (ConfigError, one line, when one cannot be imported)."""
    for name in names:
        if name in _LOADED:
            continue
        try:
            if name.endswith(".py"):
                path = Path(name).expanduser()
                if not path.is_file():
                    raise FileNotFoundError(f"no such file {str(path)!r}")
                spec = importlib.util.spec_from_file_location(_module_name(path), path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module  # picklable classes: their module must be findable
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure of the plugin's import, in one line
            raise ConfigError(f"pipeline.plugins: cannot import {name!r} ({type(e).__name__}: {e}); "
                              f"give an importable module name or a .py file path") from None
        _LOADED[name] = module
        log.info("plugin %s loaded", name)
