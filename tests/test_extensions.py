"""A new executor, prior or method is one file: each is registered from a file under tests/plugins/
(named by `pipeline.plugins`) and runs `sctd3d run` through the CLI, no production file edited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import manifest
from common import plugins as common_plugins
from pipeline import executors
from pipeline.cli import main

PLUGINS = Path(__file__).resolve().parent / "plugins"
TINY = ["generate.iterations=3", "generate.save_ply_at=[]", "generate.checkpoint_every=0",
        "init.ball_num_gaussians=100", "render.num_views=2", "render.video=false",
        "metrics.metrics=[toy_psnr]", "metrics.fid=false", "pipeline.report=false"]


@pytest.fixture
def registries(monkeypatch):
    """Whatever a plugin registers is gone after the test (the registries are module globals)."""
    monkeypatch.setattr(executors, "EXECUTORS", dict(executors.EXECUTORS))
    monkeypatch.setattr(common_plugins, "_loaded", {})  # the one plugin loader's memory


def _plugin_module(stem: str):
    import sys

    return next(m for n, m in sys.modules.items() if n.startswith("sctd3d_plugin_") and n.endswith(stem + "_py"))


def _run(tmp_path: Path, *args: str) -> tuple[int, str]:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    with pytest.raises(SystemExit) as e:
        main(["run", str(prompts), "--out", str(out), "--config", "toy.yaml", *sets, *args])
    return int(e.value.code), str(out)


def test_an_executor_from_a_plugin_file_runs_sctd3d_run(tmp_path, registries, capsys):
    plugin = str(PLUGINS / "thread_executor.py")
    code, out = _run(tmp_path, "--set", f"pipeline.plugins=[{plugin}]", "--executor", "threads")
    assert code == 0, capsys.readouterr().err
    recs = manifest.read(out).to_pylist()
    assert sorted(r["status"] for r in recs) == ["done", "done"]
    run_info = json.loads(Path(out, "run.json").read_text())
    assert run_info["executor"] == "threads"
    mod = _plugin_module("thread_executor")
    assert mod.RAN == ["plugin-worker"] * 2    # both assets ran on the plugin's worker thread
    assert mod.STARTED == ["plugin-worker"]    # after the run's start-up check, there, once


def test_an_unknown_executor_is_one_line_naming_the_registered_ones(tmp_path, registries, capsys):
    code, _ = _run(tmp_path, "--executor", "threads")   # the plugin not named: not registered
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.endswith("pipeline.executor: 'threads' is not a registered executor; registered: local, ray")
