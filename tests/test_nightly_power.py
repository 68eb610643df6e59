"""The nightly gate catches injected regressions and stays quiet on a clean re-run (CI-sized).

A CI-sized nightly (configs/nightly_toy.yaml over 3 toy prompts, 80 iterations, no FID/video) is run
clean, clean again, and with two injected regressions from benchmarks/nightly_power.py's catalogue:
one named code fault switched on through the fault registry's seam (stages/faults.py: distill_sign,
`faults.injected` in process; $SCTD3D_FAULT, read once per process, for a subprocess) and one config
override (iterations halved). Everything enters through the seams a user has: config overrides and
the named fault seam.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from common.config import load_config
from pipeline.run import run_batch
from stages import faults
from stages.report import ReportError, build_report, read_manifest

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cube", "a green sphere", "a blue cone"]
CI = ["generate.iterations=80", "generate.save_ply_at=[80]", "generate.checkpoint_every=0",
      "metrics.fid=false", "render.video=false", "pipeline.report=false"]


def _run(tmp_path, name: str, overrides: list[str] = ()) -> str:
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(PROMPTS) + "\n")
    out = str(tmp_path / name)
    run_batch(str(pf), load_config("nightly_toy.yaml", CI + list(overrides)), out, executor="local",
              progress=False)
    return out


def _report(tmp_path, run: str, base: str, allow_config_change: bool = False) -> int:
    cfg = load_config("nightly_toy.yaml")
    return build_report(run, str(tmp_path / "rep" / f"{run.rsplit('/', 1)[-1]}.html"), baseline=base, cfg=cfg,
                        allow_config_change=allow_config_change)


def _metrics(run: str) -> pd.DataFrame:
    _, df = read_manifest(run)
    return df.set_index("prompt")[["status", "toy_psnr", "toy_rprec"]].sort_index()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nightly")
    with faults.injected():  # the clean pipeline, whatever this process's environment says
        out = {"clean": _run(tmp, "clean"), "rerun": _run(tmp, "rerun")}
        with faults.injected("distill_sign"):
            out["distill_sign"] = _run(tmp, "distill_sign")
        out["iters_half"] = _run(tmp, "iters_half", ["generate.iterations=40", "generate.save_ply_at=[40]"])
    return tmp, out


def test_clean_rerun_is_identical_and_not_flagged(runs):
    tmp, r = runs
    a, b = _metrics(r["clean"]), _metrics(r["rerun"])
    assert (a["status"] == "done").all()
    pd.testing.assert_frame_equal(a, b)  # same code, seeds, machine: bit-identical metrics on CPU
    assert _report(tmp, r["rerun"], r["clean"]) == 0


@pytest.mark.parametrize("fault", ["distill_sign", "iters_half"])
def test_injected_regression_is_flagged(runs, fault):
    tmp, r = runs
    if fault == "iters_half":  # a config change: never a silent comparison (issue 26.12), compared when asked
        with pytest.raises(ReportError, match="allow-config-change"):
            _report(tmp, r[fault], r["clean"])
    assert _report(tmp, r[fault], r["clean"], allow_config_change=fault == "iters_half") == 1
    d = _metrics(r[fault])["toy_psnr"].mean() - _metrics(r["clean"])["toy_psnr"].mean()
    assert d < -load_config("nightly_toy.yaml").report.thresholds["toy_psnr"]


def test_unknown_fault_name_is_refused(tmp_path):
    """A typo is one line naming it, in process and from the environment (a run refuses it before
    it starts: exit 2, nothing written); with no fault on every hook is the identity."""
    import subprocess
    import sys

    with pytest.raises(faults.FaultError, match="distill_sing"):
        with faults.injected("distill_sing"):
            pass
    with faults.injected():
        assert faults.active() == frozenset() and faults.guidance_sign() == 1.0
    (tmp_path / "p.txt").write_text("a red cube\n")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "p.txt"), "--config",
                        "toy.yaml", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       env={**os.environ, faults.ENV: "distill_sing"}, timeout=300, cwd=str(ROOT))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "sctd3d run: error: SCTD3D_FAULT='distill_sing': unknown fault(s) ['distill_sing']" in r.stderr
    assert not (tmp_path / "out").exists()


def test_faults_are_read_once_per_process_not_per_call():
    """The hooks sit in loops (guidance per asset, compositing per render batch): they look up a
    set read once per process; a later change of the environment does not reach them, `injected`
    (the named seam) does. In a fresh process, as a run's driver or worker is."""
    import subprocess
    import sys

    code = ("import os; from stages import faults; os.environ[faults.ENV] = 'distill_sign'; "
            "a = faults.guidance_sign(); os.environ[faults.ENV] = ''; b = faults.guidance_sign()\n"
            "with faults.injected(): c = faults.guidance_sign()\n"
            "print(a, b, c, faults.guidance_sign(), sorted(faults.active()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=str(ROOT), env={k: v for k, v in os.environ.items() if k != faults.ENV})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "-1.0 -1.0 1.0 -1.0 ['distill_sign']", r.stdout


def test_render_level_faults_are_switched_by_the_registry(tmp_path):
    """fail_half fails the render stage of about half the prompts; background_twice composites again."""
    import torch

    from stages.render import render_asset

    cfg = load_config("nightly_toy.yaml")
    failing = [p for p in PROMPTS if faults.fails_under_fail_half(p)]
    passing = [p for p in PROMPTS if not faults.fails_under_fail_half(p)]
    assert failing and passing
    with faults.injected("fail_half"):
        with pytest.raises(faults.InjectedFault, match="fail_half"):
            render_asset(cfg, str(tmp_path), failing[0])
        with pytest.raises(FileNotFoundError):  # not injected: the stage goes on (and finds no asset here)
            render_asset(cfg, str(tmp_path), passing[0])
    rgb, alpha, bg = torch.full((1, 2, 2, 3), 0.2), torch.full((1, 2, 2, 1), 0.5), torch.ones(3)
    with faults.injected():
        assert torch.equal(faults.composite_background(rgb, alpha, bg), rgb)
    with faults.injected("background_twice"):
        assert torch.allclose(faults.composite_background(rgb, alpha, bg), torch.full((1, 2, 2, 3), 0.7))
