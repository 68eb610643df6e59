"""Plugins: how a new export format, method, prior or executor joins sctd3d without editing it.

Why one loader for every kind: a user extends sctd3d the same way whatever they add. A plugin is a
Python module that registers components when imported (`REGISTRY.register(obj)` of the registry of
its kind, e.g. `stages.export.formats.FORMATS`). sctd3d imports plugin modules named in two places,
once per process, before any registry lookup:

1. the environment variable `SCTD3D_PLUGINS`: comma-separated module names importable from
   `sys.path` (`mypkg.sctd3d_formats`) or paths to `.py` files (`/work/my_format.py`);
2. entry points of installed packages in the group `sctd3d.plugins`
   (pyproject: `[project.entry-points."sctd3d.plugins"] myname = "mypkg.sctd3d_plugin"`);
3. a run config's `pipeline.plugins` list (pipeline/plugins.py passes it here, with the first two).

Workers (Ray, other processes) get the driver's list explicitly: `plugin_specs()` on the driver,
`load_plugins(specs)` in the worker (the environment of a remote worker is not the driver's).

A module that fails to import is one `PluginError` line naming it, never a traceback at a lookup.
"""

from __future__ import annotations

from common.errors import UserError
import functools
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar

ENV = "SCTD3D_PLUGINS"
ENTRY_POINT_GROUP = "sctd3d.plugins"

T = TypeVar("T")
_loaded: dict[str, str] = {}  # spec -> imported module name
_loading: set[str] = set()    # specs being imported now (a plugin that looks a name up while it imports)
_lock = threading.RLock()
_MISSING: Any = object()


class PluginError(UserError, ValueError):
    """A plugin module that cannot be imported, or a registration that clashes (one line)."""


class UnknownComponent(UserError, ValueError):
    """A name no registry entry has (one line naming it and the choices)."""


def env_specs() -> list[str]:
    """Plugin modules named in $SCTD3D_PLUGINS (comma-separated), in order."""
    return [s.strip() for s in os.environ.get(ENV, "").split(",") if s.strip()]


@functools.lru_cache(maxsize=1)
def _entry_point_values() -> tuple[str, ...]:
    """Read once per process: scanning the installed distributions costs ~20 ms, and every
    registry lookup loads the plugins (the installed packages do not change under a running process)."""
    from importlib.metadata import entry_points

    return tuple(ep.value for ep in entry_points(group=ENTRY_POINT_GROUP))


def entry_point_specs() -> list[str]:
    return list(_entry_point_values())


def plugin_specs() -> list[str]:
    """Every plugin module this process loads (entry points, then $SCTD3D_PLUGINS)."""
    out: list[str] = []
    for s in [*entry_point_specs(), *env_specs(), *_loaded]:
        if s not in out:
            out.append(s)
    return out


def module_name(path: str) -> str:
    """The module name of a plugin file: the same in every process (pickled classes of a plugin
    name their module; a worker that imported the file finds it)."""
    return "sctd3d_plugin_" + "".join(c if c.isalnum() else "_" for c in os.path.realpath(path))


def _import(spec: str, source: str) -> str:
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = os.path.realpath(os.path.expanduser(spec))
        if not os.path.isfile(path):
            raise PluginError(f"{source}: plugin file {spec!r} does not exist; name a .py file or "
                              f"an importable module")
        name = module_name(path)
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise PluginError(f"{source}: cannot load plugin file {spec!r} as a Python module")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise PluginError(f"{source}: plugin {spec!r} failed to import: {type(e).__name__}: "
                              f"{e}") from e
        return name
    name = spec.split(":", 1)[0]  # entry point values may name an attribute
    try:
        importlib.import_module(name)
    except Exception as e:
        raise PluginError(f"{source}: plugin {spec!r} failed to import: {type(e).__name__}: {e}; "
                          f"give an importable module name or a .py file path") from e
    return name


def load_plugins(specs: Optional[Iterable[str]] = None, source: str = ENV) -> list[str]:
    """Import the plugin modules (default: entry points + $SCTD3D_PLUGINS) not imported yet;
    returns the specs imported by this call. Idempotent and thread-safe. `source` names where
    the list came from in the one-line PluginError (e.g. "pipeline.plugins" of a config)."""
    if specs is None:
        todo = [(s, f"entry point group {ENTRY_POINT_GROUP!r}") for s in entry_point_specs()]
        todo += [(s, ENV) for s in env_specs()]
    else:
        todo = [(s, source) for s in specs]
    done = []
    with _lock:
        for s, src in todo:
            if s in _loaded or s in _loading:
                continue
            _loading.add(s)
            try:
                _loaded[s] = _import(s, src)
            finally:
                _loading.discard(s)
            done.append(s)
    return done


def _caller_module(skip: frozenset[str]) -> str:
    """The module that called into a registry: the first frame that is module-level code, or a
    function outside this module and `skip` (the module of the registry's own wrappers, e.g.
    `register_method`)."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_globals.get("__name__", "")
        if name != __name__ and (f.f_code.co_name == "<module>" or name not in skip):
            # a plugin file is named by its path (its module name is a mangled path)
            return f.f_globals.get("__file__") or name if name.startswith("sctd3d_plugin_") else name
        f = f.f_back
    return "?"


class Registry(Mapping, Generic[T]):
    """Named components of one kind (`kind` names it in messages, e.g. "export format"): the one
    registry implementation (export formats, methods, priors, executors).

    `key` gives an object's name (default: its `.name`); `option` is the user-facing option that
    chooses entries (e.g. "--formats"), used in the one-line error for an unknown name; `unknown`
    (name, registered names) -> that line, where a registry words it its own way. Reads like a
    read-only dict of name -> component (iteration gives the names, in registration order); every
    lookup loads the plugins first (common.plugins.load_plugins). A name registered twice by
    different modules is a one-line `PluginError` naming the module that has it.
    """

    def __init__(self, kind: str, option: str = "", key: Callable[[Any], str] | None = None,
                 unknown: Callable[[str, list[str]], str] | None = None):
        self.kind, self.option = kind, option
        self._key = key or (lambda obj: obj.name)
        self._unknown = unknown
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        # the module that made the registry holds its wrappers (`register_method`): not an origin
        self._home = frozenset({sys._getframe(1).f_globals.get("__name__", "")})

    def register(self, obj: T, *, replace: bool = False) -> T:
        """Add `obj` under its name; a second object under a taken name from another module is an
        error unless `replace` (re-importing the same module re-registers silently). The origin is
        the module that called (through the registry's wrappers), not the object's class."""
        name = self._key(obj)
        origin = _caller_module(self._home)
        with _lock:
            if name in self._items and not replace and self._items[name] is not obj \
                    and self._origin.get(name) != origin:
                raise PluginError(f"{self.kind} {name!r} from {origin} is already registered by "
                                  f"{self._origin.get(name)}; choose another name")
            self._items[name] = obj
            self._origin[name] = origin
        return obj

    def unregister(self, name: str) -> None:
        with _lock:
            self._items.pop(name, None)
            self._origin.pop(name, None)

    def unknown(self, name: str) -> UnknownComponent:
        """The one-line error for a name no entry has (names the registered ones)."""
        names = self.names()
        if self._unknown is not None:
            return UnknownComponent(self._unknown(name, names))
        opt = f"{self.option}: " if self.option else ""
        return UnknownComponent(f"{opt}unknown {self.kind} {name!r}; choose from "
                                f"{', '.join(names)} (or add one: see {ENV})")

    def get(self, name: str, default: Any = _MISSING) -> T:
        """The entry `name`; without `default`, UnknownComponent (a ValueError, one line) when
        there is none; with it, `default` (dict.get)."""
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            if default is not _MISSING:
                return default
            raise self.unknown(name) from None

    def origin(self, name: str) -> str:
        """The module that registered `name`."""
        return self._origin[name]

    def names(self) -> list[str]:
        load_plugins()
        return list(self._items)

    # Mapping: name -> component ------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        load_plugins()
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __setitem__(self, name: str, obj: T) -> None:
        """Put `obj` under `name`, replacing (a test's `monkeypatch.setitem`)."""
        with _lock:
            self._items[name] = obj
            self._origin[name] = _caller_module(self._home)

    def __delitem__(self, name: str) -> None:
        with _lock:
            del self._items[name]
            self._origin.pop(name, None)

    # a test's scope: what plugins register in it is gone after -----------------------------------
    def snapshot(self) -> tuple[dict, dict]:
        with _lock:
            return dict(self._items), dict(self._origin)

    def restore(self, snap: tuple[dict, dict]) -> None:
        with _lock:
            self._items, self._origin = dict(snap[0]), dict(snap[1])

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
