"""A new executor, prior or method is one file: each is registered from a file under tests/plugins/
(named by `pipeline.plugins`) and runs `sctd3d run` through the CLI, no production file edited."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from common import manifest
from common import plugins
from pipeline import executors
from pipeline.cli import main

PLUGINS = Path(__file__).resolve().parent / "plugins"
TINY = ["generate.iterations=3", "generate.save_ply_at=[]", "generate.checkpoint_every=0",
        "init.ball_num_gaussians=100", "render.num_views=2", "render.video=false",
        "metrics.metrics=[toy_psnr]", "metrics.fid=false", "pipeline.report=false"]


@pytest.fixture
def registries(monkeypatch):
    """Whatever a plugin registers is gone after the test (the registries are module globals)."""
    from stages import methods
    from stages.priors import registry

    regs = (methods.METHODS, executors.EXECUTORS, registry.PRIORS)   # each a common.plugins.Registry
    snaps = [r.snapshot() for r in regs]
    monkeypatch.setattr(plugins, "_loaded", {})
    for name in [n for n in sys.modules if n.startswith("sctd3d_plugin_")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for r, snap in zip(regs, snaps):
        r.restore(snap)


def _plugin_module(stem: str):
    return next(m for n, m in sys.modules.items() if n.startswith("sctd3d_plugin_")
                and Path(getattr(m, "__file__", "") or "").stem == stem)


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
    code, out = _run(tmp_path, "--set", f"pipeline.plugins=[{plugin}]", "--executor", "threads",
                     "--set", "pipeline.render=false", "--set", "pipeline.score=false")
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


def test_a_camera_conditioned_prior_from_a_plugin_file_runs_sctd3d_run(tmp_path, registries, capsys):
    """A multi-view prior with two text embeddings and camera conditioning: registered from its
    file, run through the CLI; the guidance (unchanged) passes every view's camera through."""
    plugin = str(PLUGINS / "camera_prior.py")
    code, out = _run(tmp_path, "--set", f"pipeline.plugins=[{plugin}]", "--set", "prior.name=camera_mv",
                     "--set", "prior.options={tint: 0.8}", "--set", "pipeline.render=false",
                     "--set", "pipeline.score=false")
    assert code == 0, capsys.readouterr().err
    recs = manifest.read(out).to_pylist()
    assert sorted(r["status"] for r in recs) == ["done", "done"]
    aid = recs[0]["asset_id"]
    assert json.loads(Path(out, "assets", aid[:2], aid, "meta.json").read_text())["prior"] == "camera_mv"
    calls = _plugin_module("camera_prior").CALLS
    batch = 4  # toy.yaml's generate.batch_views
    # every call saw the batch's cameras: 3 iterations x 2 assets, null (inversion) and guided calls
    assert len(calls) >= 6 and all(v == batch and n % v == 0 for n, v in calls)
    assert {n // v for n, v in calls} >= {2}   # the guided call: [cond | neg] latents, cameras repeated


def test_a_plugin_priors_options_are_checked_and_enter_the_asset_id(tmp_path, registries, capsys):
    from common.config import load_config
    from pipeline.inputs import asset_generation_hash
    from common.plugins import load_plugins

    load_plugins([str(PLUGINS / "camera_prior.py")])
    base = load_config("toy.yaml", ["prior.name=camera_mv"])
    assert asset_generation_hash(base) == asset_generation_hash(load_config("toy.yaml", [
        "prior.name=camera_mv", "prior.options={}"]))
    assert asset_generation_hash(base) != asset_generation_hash(load_config("toy.yaml", [
        "prior.name=camera_mv", "prior.options={tint: 0.9}"]))
    code, _ = _run(tmp_path, "--set", f"pipeline.plugins=[{PLUGINS / 'camera_prior.py'}]",
                   "--set", "prior.name=camera_mv", "--set", "prior.options={tnt: 0.2}")
    assert code == 2
    assert "prior.options: ['tnt'] are not options of prior 'camera_mv'" in capsys.readouterr().err


def test_a_method_from_a_plugin_file_runs_sctd3d_run(tmp_path, registries, capsys):
    """A method with its own params, sampler and noise, registered from its file: sctd3d run uses
    it (the loop never names it), and its declared keys make its asset ids."""
    plugin = str(PLUGINS / "half_sds_method.py")
    code, out = _run(tmp_path, "--set", f"pipeline.plugins=[{plugin}]", "--set", "generate.method=half_sds",
                     "--set", "pipeline.render=false", "--set", "pipeline.score=false")
    assert code == 0, capsys.readouterr().err
    recs = manifest.read(out).to_pylist()
    assert sorted(r["status"] for r in recs) == ["done", "done"]
    aid = recs[0]["asset_id"]
    assert json.loads(Path(out, "assets", aid[:2], aid, "meta.json").read_text())["method"] == "half_sds"
    calls = _plugin_module("half_sds_method").CALLS
    assert len(calls) == 6 and all(200 <= t < 600 for t in calls)   # 3 iterations x 2 assets, its band

    from common.config import load_config
    from pipeline.inputs import asset_generation_hash

    cfg = load_config("toy.yaml", ["generate.method=half_sds"])
    same = load_config("toy.yaml", ["generate.method=half_sds", "generate.baselines.weight_lambda=3"])
    moved = load_config("toy.yaml", ["generate.method=half_sds", "generate.baselines.sds_min_step=300"])
    assert asset_generation_hash(cfg) == asset_generation_hash(same)    # a key it does not read
    assert asset_generation_hash(cfg) != asset_generation_hash(moved)   # a key it reads


def test_a_plugin_that_does_not_import_is_one_line(tmp_path, registries, capsys):
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("raise RuntimeError('half-written plugin')\n")
    code, _ = _run(tmp_path, "--set", f"pipeline.plugins=[{bad}]")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "broken_plugin.py" in err and "RuntimeError: half-written plugin" in err


def test_a_stateful_method_from_a_plugin_file_keeps_its_state_across_a_resume(tmp_path, registries, capsys):
    """A method that owns per-asset state (an EMA buffer of its gradient, tests/plugins/
    ema_sds_method.py) runs through the CLI; its state is in the checkpoint, and a run that dies
    mid-asset and is resumed from the checkpoint ends bit-identical to an uninterrupted one."""
    from safetensors.torch import load_file

    from common.plugins import load_plugins
    from kernels.ply import load_ply

    plugin = str(PLUGINS / "ema_sds_method.py")
    load_plugins([plugin])
    mod = _plugin_module("ema_sds_method")
    sets = ["--set", f"pipeline.plugins=[{plugin}]", "--set", "generate.method=ema_sds",
            "--set", "generate.iterations=8", "--set", "generate.checkpoint_every=2",
            "--set", "pipeline.render=false", "--set", "pipeline.score=false"]
    (tmp_path / "whole").mkdir()
    (tmp_path / "resumed").mkdir()
    code, whole = _run(tmp_path / "whole", *sets)
    assert code == 0, capsys.readouterr().err

    mod.CRASH_AT = 5                                    # dies in iteration 5: the last checkpoint is 4
    try:
        code, out = _run(tmp_path / "resumed", *sets)
    finally:
        mod.CRASH_AT = None
    assert sorted(r["status"] for r in manifest.read(out).to_pylist()) == ["failed", "failed"]
    aids = sorted(r["asset_id"] for r in manifest.read(out).to_pylist())
    for aid in aids:
        ck = load_file(str(Path(out, "assets", aid[:2], aid, "checkpoints", "ckpt_0000004.safetensors")))
        assert ck["method/ema"].shape[0] == 4 and float(ck["method/ema"].norm()) > 0   # toy.yaml: 4 views

    code, out = _run(tmp_path / "resumed", *sets)     # the same command again resumes both at 4
    assert code == 0, capsys.readouterr().err
    recs = {r["asset_id"]: r for r in manifest.read(out).to_pylist()}
    assert sorted(recs) == aids and {r["status"] for r in recs.values()} == {"done"}
    assert {r["resumed_from_iter"] for r in recs.values()} == {4}
    for aid in aids:
        a = load_ply(str(Path(whole, "assets", aid[:2], aid, "asset.ply")))
        b = load_ply(str(Path(out, "assets", aid[:2], aid, "asset.ply")))
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (aid, name)


@pytest.mark.parametrize("kind,module,registers", [
    ("distillation method", "stages.methods",
     "register_method(MethodSpec('sds', METHODS['sds'].kernel, (), METHODS['sds'].noise, METHODS['sds'].params))"),
    ("prior", "stages.priors.registry", "register_prior(PriorSpec('toy_sd', lambda *a: None))"),
    ("executor", "pipeline.executors", "register_executor(ExecutorSpec('local', lambda: None, lambda p: {}))"),
])
def test_a_plugin_that_takes_a_registered_name_is_one_line(tmp_path, registries, capsys, kind, module, registers):
    """Every registry is common.plugins.Registry: a plugin whose component takes a shipped name is
    refused in one line naming both modules (it used to replace the shipped one silently)."""
    clash = tmp_path / "clash_plugin.py"
    clash.write_text(f"from {module} import *\n{registers}\n")
    name = registers.split("'")[1]
    code, out = _run(tmp_path, "--set", f"pipeline.plugins=[{clash}]", "--set", "pipeline.render=false",
                     "--set", "pipeline.score=false")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{kind} {name!r} from {clash}" in err and "pipeline.plugins" in err
    assert "is already registered by " in err and "choose another name" in err
    assert not Path(out).exists() or not manifest.read(out).to_pylist()
