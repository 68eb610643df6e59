"""SIGINT / SIGTERM on a real `python -m pipeline.cli run` (issue 14, item 10): no new asset
starts, the running one stops at its next iteration and checkpoints there, run.json says
`interrupted`, the lock is released, one re-run hint and no traceback, exit 130 / 143; the same
command then finishes, resuming the interrupted asset from that checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from common import manifest
from test_reliability import _env, _latest_ckpt, _run_cmd, tiny_overrides

ITERS = 120  # the signal lands at iteration ~5, well before the end; the re-run resumes


def _start(tmp_path: Path, model: Path) -> tuple[list[str], Path, subprocess.Popen]:
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": "toy.yaml", **tiny_overrides(model, ITERS)}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "out"
    cmd = _run_cmd(prompts, out, cfg_file)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return cmd, out, proc


def _wait_mid_asset(out: Path, proc: subprocess.Popen, timeout_s: float = 120) -> Path:
    """The first asset's folder once it has a checkpoint (generation is under way)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and proc.poll() is None:
        dirs = [d for d in (out / "assets").glob("*/*") if d.is_dir() and _latest_ckpt(d) >= 5]
        if dirs:
            return dirs[0]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no asset reached a checkpoint: " + proc.communicate()[1][-2000:])


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_rerun_resumes(tmp_path, tiny_pixel_sd_dir, sig, code):
    cmd, out, proc = _start(tmp_path, tiny_pixel_sd_dir)
    adir = _wait_mid_asset(out, proc)
    proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=60)  # stops at the next iteration, not the end
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"stopped by {sig.name}" in stderr and "re-run the same command" in stderr, stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["interrupted_by"] == sig.name
    assert not (out / "run.lock").exists()
    # the interrupted asset has no record (not `failed`), no asset.ply, and a checkpoint where it stopped
    assert manifest.read(str(out)).num_rows == 0
    assert not (adir / "asset.ply").exists()
    stopped_at = _latest_ckpt(adir)
    assert 5 <= stopped_at < ITERS
    assert len([d for d in (out / "assets").glob("*/*") if d.is_dir()]) == 1  # the 2nd never started

    if sig == signal.SIGTERM:  # one re-run is enough to show the resume (it costs a full asset)
        return
    rerun = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = {r["asset_id"]: r for r in manifest.read(str(out)).to_pylist()}
    assert {r["status"] for r in rows.values()} == {"done"} and len(rows) == 2
    assert rows[adir.name]["resumed_from_iter"] == stopped_at
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_sigterm_on_a_ray_run_exits_143_without_a_stack_dump(tmp_path, tiny_pixel_sd_dir):
    """ray.init installs its own SIGTERM handler (sys.exit from wherever the driver is, then a
    core-worker abort: exit 134 and a stack dump); ours goes back on top after connecting."""
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": "toy.yaml", **tiny_overrides(tiny_pixel_sd_dir, ITERS)}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "out"
    cmd = _run_cmd(prompts, out, cfg_file) + ["--executor", "ray", "--num-workers", "1"]
    env = dict(_env(), RAY_ADDRESS="local")  # a fresh local Ray, never a cluster already running here
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_mid_asset(out, proc, timeout_s=240)
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "Stack trace" not in stderr, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "re-run the same command" in stderr
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["interrupted_by"] == "SIGTERM"
    assert not (out / "run.lock").exists() and manifest.read(str(out)).num_rows == 0


def test_stop_handler_first_signal_requests_a_stop_second_stops_now():
    """In-process: the handlers run_batch installs (main thread), restored afterwards."""
    import os

    from common import deadline
    from pipeline.run import _StopOnSignals

    before = signal.getsignal(signal.SIGTERM)
    with _StopOnSignals() as s:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs in the main thread at the next bytecode boundary
        assert s.received == "SIGTERM" and deadline.stop_requested() == "SIGTERM"
        with pytest.raises(deadline.RunInterrupted, match=r"interrupted \(SIGTERM\) at it 3"):
            deadline.check("it 3")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) == before and deadline.stop_requested() == ""


def test_ctrl_c_outside_a_run_is_one_line_and_130(capsys):
    from pipeline.cli import guarded

    def loading():
        raise KeyboardInterrupt

    assert guarded("sctd3d run", loading) == 130
    assert capsys.readouterr().err == "sctd3d run: interrupted\n"
