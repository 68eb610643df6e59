"""User-facing errors share one base (common.errors.UserError): the CLI turns any of them, a
plugin's included, into one line and exit 2 without a list of error types to keep up to date."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# every error the CLI used to list by hand, by module and class name
USER_ERRORS = [("pipeline.executors", "ExecutorError"), ("pipeline.inputs", "InputError"),
               ("common.lock", "LockHeld"), ("stages.toyworld.catalogue", "CatalogueError"),
               ("common.manifest", "ManifestError"), ("common.storage", "StorageError"),
               ("stages.checkpoint", "CheckpointError"), ("stages.init", "InitError"),
               ("stages.metrics.errors", "MetricWeightsError"), ("stages.priors.device", "DeviceError"),
               ("stages.priors.stable_diffusion", "PriorLoadError"), ("stages.report", "ReportError"),
               ("common.plugins", "PluginError"), ("common.plugins", "UnknownComponent"),
               ("pipeline.cli", "UsageError")]


@pytest.mark.parametrize("module,name", USER_ERRORS)
def test_each_user_facing_error_is_a_user_error(module, name):
    import importlib

    assert issubclass(getattr(importlib.import_module(module), name), UserError)


def test_cli_lists_no_error_types_by_hand():
    """`_user_errors` names the base, not the modules' classes (a new error needs no CLI edit)."""
    tree = ast.parse((ROOT / "pipeline" / "cli.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_user_errors")
    names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    assert "UserError" in names
    assert not names & {name for _, name in USER_ERRORS}


def test_a_new_user_error_is_one_line_exit_2(capsys):
    """An error class the CLI has never heard of (as a plugin would define) gets the one-line rule."""
    from pipeline.cli import guarded

    class QuotaError(UserError, RuntimeError):
        pass

    def fail():
        raise QuotaError("bucket quota reached: free space or choose another --out")

    assert guarded("sctd3d run", fail, False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sctd3d run: error: bucket quota reached: free space or choose another --out"]
