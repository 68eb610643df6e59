"""Plugins: modules imported before a run so that they register methods, priors, inits, executors
or export formats (`pipeline.plugins` in the config, e.g. `--set pipeline.plugins=[mypkg.sctd3d]`).

Why: a new component is one file that calls its registry (`pipeline.executors.register_executor`,
`stages.priors.registry.register_prior`, ...); naming it here is all it takes to use it, with no
production file edited. Each entry is a module name (importable where the run and its workers
run) or a path to a `.py` file. Every process that runs work imports them: the driver (the CLI,
`run_batch`) and each worker before its first asset (`pipeline.asset.process_asset`). The config
is the user's own (prompt rows may not set `pipeline.*`), so naming code to import is theirs too.
Modules named in `$SCTD3D_PLUGINS` or `sctd3d.plugins` entry points load too (common/plugins.py).
"""

from __future__ import annotations

import logging
from typing import Iterable

from common import plugins as _plugins
from common.config import ConfigError

log = logging.getLogger(__name__)


def load_plugins(names: Iterable[str]) -> None:
    """Import each plugin once per process (ConfigError, one line, when one cannot be imported):
    `$SCTD3D_PLUGINS` and `sctd3d.plugins` entry points, then the config's `pipeline.plugins`.
    The loading itself is common/plugins.py's (one loader for every kind of plugin)."""
    try:
        for spec in [*_plugins.load_plugins(), *_plugins.load_plugins(list(names),
                                                                      "pipeline.plugins")]:
            log.info("plugin %s loaded", spec)
    except _plugins.PluginError as e:
        raise ConfigError(str(e)) from None
