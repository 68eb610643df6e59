"""benchmarks/gpu_check.sh: its CPU-runnable steps (the sd21 benchmark and a 2-prompt `sctd3d run`)
run here in --cpu-smoke mode on the tiny diffusers SD; a broken step fails the script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # ~1 min on 2 cores; still part of `make test`


def _check(model: str, out: Path, py: str = sys.executable) -> subprocess.CompletedProcess:
    env = dict(os.environ, PY=py, GPU_CHECK_OUT=str(out))
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", model],
                          capture_output=True, text=True, env=env, timeout=600)


def test_cpu_smoke_runs_the_benchmark_and_two_prompts(tiny_sd_dir, tmp_path):
    r = _check(str(tiny_sd_dir), tmp_path / "check")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert [x["config"] for x in recs] == ["sd21/sds", "sd21/sctd"]
    for x in recs:
        assert {"s_per_it", "peak_memory_mb", "projected_min_per_5000_it", "meets_6_min_goal"} <= set(x)
        assert x["projected_min_per_5000_it"] == round(x["s_per_it"] * 5000 / 60, 2)
    assert [x["unet_calls_per_it"] for x in recs][0] == 1.0  # SDS: the guided call only
    summary = r.stdout[r.stdout.index("=== summary"):]
    assert "3 bench_generate sd21 (sds, sctd)            ok" in summary
    assert "5 sctd3d run: 2 prompts, local executor      ok" in summary
    assert "skipped (needs CUDA)" in summary
    run = json.loads((tmp_path / "check" / "run" / "run.json").read_text())
    assert run["executor"] == "local"
    metas = list((tmp_path / "check" / "run" / "assets").glob("*/*/meta.json"))
    assert len(metas) == 2 and all(json.loads(m.read_text())["status"] == "done" for m in metas)


def test_a_failing_step_fails_the_check(tmp_path):
    r = _check(str(tmp_path / "model"), tmp_path / "check", py="false")  # every python step exits 1
    assert r.returncode == 1
    summary = r.stdout[r.stdout.index("=== summary"):]
    assert summary.count("FAILED (exit 1)") == 2 and summary.count("skipped") == 3
