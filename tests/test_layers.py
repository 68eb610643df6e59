"""The import rules of the layout, checked on the source (AST), including imports inside functions.

kernels/  pure tensor code          -> imports only kernels
common/   shared ground (config types, storage, manifest schema, deadline)
                                    -> imports only common
stages/   init, generate, render, metrics, report, priors, toyworld, export
                                    -> imports kernels, common, stages
pipeline/ CLI, inputs, executors, run (the orchestrator)
                                    -> imports anything of the project
and no import circle between project modules, nor between sub-packages (stages.priors,
stages.toyworld, ...: each one node).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "common", "stages", "pipeline")
ALLOWED = {
    "kernels": {"kernels"},
    "common": {"common"},
    "stages": {"kernels", "common", "stages"},
    "pipeline": {"kernels", "common", "stages", "pipeline"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            out[_module_name(p)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules imported by `name` (absolute and relative, at any depth of the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:  # `from pkg import submodule`
                found.add(f"{mod}.{a.name}")
    return {m for m in found if m in MODULES}


def _edges(name: str, deps: set[str]) -> set[str]:
    """Drop the edges between a package's __init__ and its own submodules (not circles)."""
    return {d for d in deps if not (d.startswith(name + ".") or name.startswith(d + "."))}


GRAPH = {name: _edges(name, _imports(name, path)) for name, path in MODULES.items()}


def violations(graph: dict[str, set[str]], pkg: str) -> list[str]:
    bad = []
    for name, deps in graph.items():
        if name.split(".")[0] != pkg:
            continue
        for d in sorted(deps):
            if d.split(".")[0] not in ALLOWED[pkg]:
                bad.append(f"{name} imports {d}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_layer_exists():
    for pkg in PACKAGES:
        assert (ROOT / pkg / "__init__.py").is_file(), f"{pkg}/ is not a package"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_layers_point_one_way(pkg):
    bad = violations(GRAPH, pkg)
    assert not bad, f"{pkg}/ may import only {sorted(ALLOWED[pkg])}:\n" + "\n".join(bad)


def test_no_import_circles():
    found = cycles(GRAPH)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to sub-packages (stages.priors.*, stages.toyworld.* ... each one
    node; a plain module stays itself)."""
    def node(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or (ROOT / Path(*parts)).is_dir() else m

    out: dict[str, set[str]] = {}
    for name, deps in graph.items():
        out.setdefault(node(name), set()).update(node(d) for d in deps if node(d) != node(name))
    return out


def test_no_circles_between_subpackages():
    """Sub-packages point one way too: e.g. stages.toyworld (the world the toy priors are built
    from) never imports stages.priors, which reads it."""
    found = cycles(subpackage_graph(GRAPH))
    assert not found, "sub-package circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_a_lazy_upward_import_and_a_circle(tmp_path):
    """The rules are live: an import inside a function counts, and a two-module circle is found."""
    p = tmp_path / "bad.py"
    p.write_text("def f():\n    from stages.render import render_asset\n    from . import ply\n")
    deps = _imports("kernels.bad", p)
    assert {"stages.render", "kernels.ply"} <= deps
    assert violations({"kernels.bad": deps}, "kernels") == ["kernels.bad imports stages.render"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    mutual = {"stages.priors.toy_exact": {"stages.toyworld.views"},
              "stages.toyworld.prior_training.common": {"stages.priors.views"}}
    assert cycles(subpackage_graph(mutual)) == [["stages.priors", "stages.toyworld"]]


def test_every_source_folder_is_a_package():
    """setuptools' `find` skips a folder without __init__.py and everything under it, so a
    non-editable install (the cluster's `pip install`) would lack it (stages/toyworld once did)."""
    missing = sorted(str(d.relative_to(ROOT)) for pkg in PACKAGES for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")]
                     if d.is_dir() and any(d.glob("*.py")) and not (d / "__init__.py").is_file())
    assert not missing, f"folders with Python modules but no __init__.py: {missing}"
