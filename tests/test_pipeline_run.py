"""pipeline.run end to end with a FakeGenerate test double in the generation seam pipeline.workers.GENERATOR (the
real stages are wired by default): local and Ray runs, skip-on-rerun, interruption + resume,
rejected rows, the run lock."""

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fakes
from common import manifest
from common.config import load_config
from common.lock import LockHeld, RunLock
from pipeline.run import run_batch
from common.storage import open_storage

PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow torus", "a white cylinder",
           "a red cone", "a blue cube"]


class FakeInterrupt(BaseException):
    """Simulates the driver being killed mid-asset (not an Exception: nothing catches it)."""


class FakeGenerate:
    """Test double for stages.generate.generate: writes tiny artifacts and a checkpoint, counts
    calls in `calls_dir` (works across worker processes), optional failure modes by prompt."""

    def __init__(self, calls_dir, sleep_s=0.0, fail=(), interrupt=(), die_once=()):
        self.calls_dir = str(calls_dir)
        self.sleep_s, self.fail, self.interrupt, self.die_once = sleep_s, set(fail), set(interrupt), \
            set(die_once)

    def __call__(self, cfg, prompt, seed, asset_dir, progress=False):
        d = Path(asset_dir)
        Path(self.calls_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.calls_dir) / f"{d.name}-{uuid.uuid4().hex[:6]}").write_text(prompt)
        ckpt = d / "checkpoints" / "ckpt.json"
        resumed = json.loads(ckpt.read_text())["iteration"] if ckpt.exists() else None
        if prompt in self.fail:
            raise ValueError(f"FakeGenerate: NaN loss for {prompt!r}")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_text(json.dumps({"iteration": 5}))
        if prompt in self.interrupt and resumed is None:
            raise FakeInterrupt(prompt)
        marker = Path(self.calls_dir) / f"died-{d.name}"
        if prompt in self.die_once and not marker.exists():
            marker.write_text("x")
            os._exit(1)  # the worker process dies (preemption)
        time.sleep(self.sleep_s)
        (d / "asset.ply").write_bytes(b"ply\n" + prompt.encode())
        (d / "meta.json").write_text(json.dumps({"prompt": prompt, "seed": seed}))
        return fakes.result(d, num_gaussians=10 + seed, resumed_from=resumed or 0)


def calls(calls_dir) -> int:
    return len([p for p in Path(calls_dir).glob("*") if not p.name.startswith("died-")]) \
        if Path(calls_dir).exists() else 0


@pytest.fixture(scope="module")
def cfg():
    c = load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                 "pipeline.report=false", "metrics.fid=false",
                                 "pipeline.backoff_s=0.1"])
    return c


def _write(tmp_path, lines, name="prompts.txt"):
    p = tmp_path / name
    p.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return str(p)


def test_local_run_rejects_bad_rows_and_skips_on_rerun(tmp_path, cfg, monkeypatch):
    bad = [b"", b"   ", b"x" * 10_000, b"bell\x07here", b"\xff\xfe broken", b"a red cube"]
    prompts = _write(tmp_path, PROMPTS[:3] + bad + [b"../../etc/passwd", b"/abs/path"])
    out = str(tmp_path / "out")
    fake = FakeGenerate(tmp_path / "calls", fail={"a green cone"})
    fakes.use_generate(monkeypatch, fake)
    s = run_batch(prompts, cfg, out, progress=False)
    assert (s.total, s.done, s.failed, s.rejected, s.duplicates) == (5, 4, 1, 5, 1)
    rows = manifest.records_by_id(out)
    assert manifest.counts(manifest.read(out)) == {"done": 4, "failed": 1, "rejected": 5}
    for r in rows.values():
        if r["status"] == "done":
            assert Path(r["asset_uri"]).read_bytes().startswith(b"ply")
            assert r["asset_uri"].startswith(out + "/assets/" + r["asset_id"][:2] + "/")
            assert r["attempts"] == 1 and r["method"] == "sds" and r["code_version"]
            assert r["num_gaussians"] == 10 + r["seed"] and r["device"] == "cpu" and r["gpu_s"] is None
        elif r["status"] == "failed":
            assert "ValueError: FakeGenerate: NaN loss" in r["error"]
    # prompts shaped like paths stay data: nothing outside out/, no temp files
    assert not (tmp_path / "etc").exists() and sorted(os.listdir(tmp_path)) == ["calls", "out", "prompts.txt"]
    assert open_storage(out).orphan_temp_files() == []
    run = json.loads((Path(out) / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"]["rejected"] == 5
    assert not (Path(out) / "run.lock").exists()

    # identical re-run: only the failed asset is retried, and now succeeds
    n = calls(tmp_path / "calls")
    fakes.use_generate(monkeypatch, FakeGenerate(tmp_path / "calls"))
    s2 = run_batch(prompts, cfg, out, progress=False)
    assert (s2.skipped, s2.done, s2.failed) == (4, 1, 0) and calls(tmp_path / "calls") == n + 1
    rows = manifest.records_by_id(out)
    assert all(r["status"] != "failed" for r in rows.values())
    assert rows[[k for k, r in rows.items() if r["prompt"] == "a green cone"][0]]["attempts"] == 2
    fakes.use_generate(monkeypatch, fake)
    s3 = run_batch(prompts, cfg, out, progress=False)
    assert (s3.skipped, s3.done) == (5, 0) and calls(tmp_path / "calls") == n + 1


def test_interrupted_run_resumes_from_checkpoint(tmp_path, cfg, monkeypatch):
    prompts = _write(tmp_path, PROMPTS[:4])
    out = str(tmp_path / "out")
    fakes.use_generate(monkeypatch, FakeGenerate(tmp_path / "calls", interrupt={"a green cone"}))
    with pytest.raises(FakeInterrupt):
        run_batch(prompts, cfg, out, progress=False)
    assert manifest.counts(manifest.read(out))["done"] == 2  # the two before the interruption
    assert not (Path(out) / "run.lock").exists()  # released on the way out
    s = run_batch(prompts, cfg, out, progress=False)
    assert (s.skipped, s.done) == (2, 2) and calls(tmp_path / "calls") == 5
    rows = {r["prompt"]: r for r in manifest.read(out).to_pylist()}
    assert rows["a green cone"]["resumed_from_iter"] == 5
    assert rows["a yellow torus"]["resumed_from_iter"] == 0  # generated from the start


def test_run_lock_refuses_second_run_and_recovers_stale(tmp_path, cfg, monkeypatch):
    prompts = _write(tmp_path, PROMPTS[:1])
    out = str(tmp_path / "out")
    fakes.use_generate(monkeypatch, FakeGenerate(tmp_path / "c"))
    held = RunLock(open_storage(out)).acquire()
    try:
        with pytest.raises(LockHeld, match=r"in use by another run: host .* pid \d+"):
            run_batch(prompts, cfg, out, progress=False)
    finally:
        held.release()
    assert calls(tmp_path / "c") == 0
    # a lock left by a dead process on this host is stale and taken over
    (Path(out) / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 7,
                                                    "token": "t", "started_at": 0,
                                                    "heartbeat_at": time.time()}))
    s = run_batch(prompts, cfg, out, progress=False)
    assert s.done == 1 and not (Path(out) / "run.lock").exists()


# ----------------------------------------------------------------------------------------------
# Ray (one cluster for this module: ray.init costs ~5 s)
# ----------------------------------------------------------------------------------------------


def test_ray_run_interrupt_resume_and_rerun(tmp_path, cfg, ray_local, monkeypatch):
    prompts = _write(tmp_path, PROMPTS[:6] + [b"", PROMPTS[0].encode()])
    out = str(tmp_path / "out")
    calls_dir = tmp_path / "calls"
    fake = FakeGenerate(calls_dir, sleep_s=0.2, die_once={"a blue sphere"})
    fakes.use_generate(monkeypatch, fake)  # in each Ray worker too (the run's worker start-up)
    with monkeypatch.context() as m:
        fakes.stop_after_commits(m, 3)  # a Ctrl-C after the third record
        s1 = run_batch(prompts, cfg, out, executor="ray", num_workers=2, progress=False)
    assert s1.done == 3 and s1.interrupted == "SIGINT"
    assert json.loads((Path(out) / "run.json").read_text())["status"] == "interrupted"
    # which assets ran before the stop depends on the machine's load: the blue sphere's worker dies
    # at its first attempt, in whichever run that is; its record says attempts 2 when that same run
    # committed it (run 1 after the retry, or run 2 if run 1 never reached it), and 1 when run 1's
    # retry was stopped and the resume redid it
    first = {r["prompt"] for r in manifest.read(out).to_pylist() if r["status"] == "done"}
    died_in_first = any(calls_dir.glob("died-*"))
    s2 = run_batch(prompts, cfg, out, executor="ray", num_workers=2, progress=False)
    assert (s2.skipped, s2.done, s2.failed, s2.rejected, s2.duplicates) == (3, 3, 0, 1, 1)
    table = manifest.read(out)
    assert manifest.counts(table) == {"done": 6, "failed": 0, "rejected": 1}
    rows = {r["prompt"]: r for r in table.to_pylist() if r["status"] == "done"}
    assert sorted(rows) == sorted(PROMPTS[:6])
    # its worker died once (the fake dies once per prompt, whatever the process), retried
    assert rows["a blue sphere"]["attempts"] == (2 if "a blue sphere" in first or not died_in_first else 1)
    assert [p.name for p in calls_dir.glob("died-*")] == [f"died-{rows['a blue sphere']['asset_id']}"]
    assert all(rows[p]["attempts"] == 1 for p in PROMPTS[:6] if p != "a blue sphere")
    for r in rows.values():
        adir = Path(r["asset_uri"]).parent
        assert (adir / "asset.ply").exists() and (adir / "meta.json").exists()
        assert r["worker"] and r["wall_s"] > 0
    n = calls(calls_dir)
    assert n <= 6 + 2 + 1  # each asset at most once more than needed (in-flight at the stop, death)
    s3 = run_batch(prompts, cfg, out, executor="ray", num_workers=2, progress=False)
    assert (s3.skipped, s3.done) == (6, 0) and calls(calls_dir) == n
    manifest.compact(out)
    assert pq.read_table(Path(out) / "manifest" / "manifest.parquet").num_rows == 7
    assert list((Path(out) / "manifest" / "parts").glob("*")) == []


def test_real_render_and_report_stages_are_wired(tmp_path, monkeypatch):
    """The default wiring calls the real stages.render and stages.report (generation is faked
    with a catalogue object saved as a real .ply, so no prior is needed)."""
    from kernels.ply import save_ply
    from stages.toyworld.catalogue import build_object

    class FakeGenerateFromCatalogue:
        def __call__(self, cfg, prompt, seed, asset_dir, progress=False):
            g = build_object(prompt)
            save_ply(str(Path(asset_dir) / "asset.ply"), g)
            return fakes.result(asset_dir, num_gaussians=g.num())

    cfg = load_config("demo.yaml", ["pipeline.score=false", "metrics.fid=false",
                                    "render.video=false", "render.num_views=4"])
    prompts = _write(tmp_path, ["a red cube"])
    fakes.use_generate(monkeypatch, FakeGenerateFromCatalogue())
    s = run_batch(prompts, cfg, str(tmp_path / "out"), progress=False)
    assert s.done == 1 and s.report_exit_code == 0
    [r] = manifest.read(str(tmp_path / "out")).to_pylist()
    assert r["num_gaussians"] > 0 and Path(r["frames_uri"]).is_dir()
    assert len(list(Path(r["frames_uri"]).glob("*.png"))) == 4 and Path(r["sheet_uri"]).exists()
    assert (tmp_path / "out" / "report" / "report.html").exists()
