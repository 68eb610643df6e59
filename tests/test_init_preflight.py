"""Issue 13 item 3: an init method's requirements are checked before any asset runs, before the
prior loads (local and Ray), with the real absence of Point-E on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from common.config import load_config
from stages import init as init_mod
from stages.init import POINT_E_INSTALL, InitError, check_requirements

ROOT = Path(__file__).resolve().parent.parent
needs_absent_point_e = pytest.mark.skipif(init_mod.point_e_available(), reason="point-e is installed here")
# a hub id that is never cached: if the prior were loaded first, the error would be PriorLoadError's
OVERRIDES = ["prior.model=someorg/never-cached-sd", "generate.iterations=2", "prior.image_size=64"]


@needs_absent_point_e
def test_check_requirements_names_install_and_fallbacks():
    with pytest.raises(InitError) as ei:
        check_requirements(load_config("sd21.yaml").init)
    msg = str(ei.value)
    assert POINT_E_INSTALL in msg and "init.method=ball" in msg and "toy_shape" in msg and "\n" not in msg
    for method in ("ball", "toy_shape"):  # the fallbacks need nothing extra
        check_requirements(load_config("sd21.yaml", [f"init.method={method}"]).init)


def test_check_requirements_passes_with_point_e_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "point_e", types.ModuleType("point_e"))
    check_requirements(load_config("sd21.yaml").init)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@needs_absent_point_e
def test_run_without_point_e_fails_before_any_work(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red cube\na blue sphere\n")
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    r = _cli("run", "prompts.txt", "--out", "out", "--config", "sd21.yaml", *sets, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    err = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(err) == 1 and err[0].startswith("sctd3d run: error: init.method=point_e") and POINT_E_INSTALL in err[0]
    assert "Traceback" not in r.stderr and "never-cached-sd" not in r.stderr  # the prior was never loaded
    assert not (tmp_path / "out" / "run.json").exists() and not (tmp_path / "out" / "assets").exists()


@needs_absent_point_e
def test_generate_without_point_e_fails_before_the_prior_loads(tmp_path):
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    r = _cli("generate", "a red cube", "--out", "asset", "--config", "sd21.yaml", *sets, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "sctd3d generate: error: init.method=point_e" in r.stderr and "never-cached-sd" not in r.stderr
    assert not (tmp_path / "asset").exists()


@needs_absent_point_e
def test_ray_run_without_point_e_fails_on_the_driver_before_dispatch(tmp_path, monkeypatch):
    from pipeline import run as run_mod

    def no_executor(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("an executor was started although Point-E is missing")

    monkeypatch.setattr(run_mod, "make_executor", no_executor)
    (tmp_path / "p.txt").write_text("a red cube\n")
    cfg = load_config("sd21.yaml", OVERRIDES)
    with pytest.raises(InitError, match="point-e"):
        run_mod.run_batch(str(tmp_path / "p.txt"), cfg, str(tmp_path / "out"), executor="ray")
    assert not (tmp_path / "out" / "run.json").exists()
    # and the cluster entry script turns it into one line and exit 2
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import ray_entry
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    rc = ray_entry.main([str(tmp_path / "p.txt"), "--config", "sd21.yaml", "--out", str(tmp_path / "out"),
                         *[a for o in OVERRIDES for a in ("--set", o)]])
    assert rc == 2
