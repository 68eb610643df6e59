"""Reliability with the real generation stage (a tiny random-init SD from conftest, a few dozen
iterations): two drivers started at once on one output root, a driver SIGKILLed mid-asset and the
same command re-run (nothing committed is redone; the killed asset resumes from its last
checkpoint), NaN injection caught by the generation guard and recorded, and temp files left by
killed writes removed on the next run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fakes
from common import manifest
from common.config import load_config
from pipeline.run import run_batch
from common.storage import open_storage

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow torus"]
ITERS, CKPT_EVERY = 60, 5


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two intra-op threads on a busy 2-core CI box are ~40x slower than one for these tiny models."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_overrides(model: Path, iterations: int = ITERS) -> dict:
    """Real generation at CI size: 16 px pixel-space SD, 64 Gaussians, one view per iteration (on
    the CPU: prior.allow_cpu, as stable_diffusion otherwise refuses to run without CUDA)."""
    return {"prior": {"name": "stable_diffusion", "model": str(model), "image_size": 16,
                      "allow_cpu": True},
            "init": {"ball_num_gaussians": 64},
            "generate": {"iterations": iterations, "checkpoint_every": CKPT_EVERY, "batch_views": 1,
                         "save_ply_at": [iterations], "densify": {"start": 10_000, "end": 10_001}},
            "metrics": {"fid": False},
            "pipeline": {"render": False, "score": False, "report": False, "executor": "local"}}


def tiny_cfg(model: Path, **kw):
    cfg = load_config("toy.yaml")
    from common.config import apply_overrides

    return apply_overrides(cfg, tiny_overrides(model, **kw), source="test")


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _run_cmd(prompts: Path, out: Path, cfg_file: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", str(prompts), "--out", str(out),
            "--config", str(cfg_file)]


def _committed(out: Path) -> dict[str, int]:
    parts = out / "manifest" / "parts"
    return {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")} if parts.exists() else {}


def _latest_ckpt(adir: Path) -> int:
    return max((int(p.stem.split("_")[1]) for p in (adir / "checkpoints").glob("ckpt_*.json")),
               default=0)


def test_two_drivers_then_driver_killed_rerun_finishes(tmp_path, tiny_pixel_sd_dir):
    import yaml

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": "toy.yaml", **tiny_overrides(tiny_pixel_sd_dir)}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    cmd = _run_cmd(prompts, out, cfg_file)

    # 1. two drivers at once: exactly one runs, the other names the lock's owner and its age
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 150
        loser = None
        while loser is None and time.monotonic() < deadline:
            loser = next((p for p in procs if p.poll() is not None), None)
            time.sleep(0.05)
        assert loser is not None, "neither driver stopped"
        winner = procs[1 - procs.index(loser)]
        err = loser.stderr.read()
        assert loser.returncode != 0 and winner.poll() is None, err[-2000:]
        assert re.search(rf"in use by another run: host {re.escape(socket.gethostname())} pid "
                         rf"{winner.pid}, started \d+ s ago, last heartbeat \d+ s ago", err), err[-2000:]

        # 2. kill the winning driver mid-asset: >= 1 asset committed, another past 2 checkpoints
        adirs = lambda: [d for d in (out / "assets").glob("*/*") if d.is_dir()]  # noqa: E731
        while time.monotonic() < deadline and winner.poll() is None:
            done = {n.split(".")[0] for n in _committed(out) if not n.startswith("rejected")}
            busy = [d for d in adirs() if d.name not in done and _latest_ckpt(d) >= 2 * CKPT_EVERY]
            if done and busy:
                break
            time.sleep(0.02)
        assert winner.poll() is None, "the run finished before it could be killed: " + \
            winner.stderr.read()[-2000:]
        os.kill(winner.pid, signal.SIGKILL)
        winner.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
            for f in (p.stdout, p.stderr):
                f.close()

    before = _committed(out)
    done_ids = {n.split(".")[0] for n in before}
    committed = lambda: {r["asset_id"]: r for r in manifest.read(str(out)).to_pylist()  # noqa: E731
                         if r["asset_id"] in done_ids}
    before_rows = committed()
    assert done_ids and len(done_ids) < len(PROMPTS)
    plys = {d.name: (d / "asset.ply").stat().st_mtime_ns for d in adirs() if d.name in done_ids}
    killed = [d for d in adirs() if d.name not in done_ids]
    assert len(killed) == 1 and not (killed[0] / "asset.ply").exists()
    resume_at = _latest_ckpt(killed[0])  # the newest committed checkpoint survives the kill
    assert resume_at >= 2 * CKPT_EVERY and resume_at % CKPT_EVERY == 0
    assert json.loads((out / "run.lock").read_text())["pid"] == winner.pid  # left by the dead run

    # 3. the same command again finishes the run without redoing committed assets
    rerun = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "taking over stale run lock" in rerun.stderr
    assert f"{len(PROMPTS)} done" not in rerun.stdout and f"{len(done_ids)} already done" in rerun.stdout
    # committed records untouched (the re-run compacted the parts into manifest.parquet)
    assert committed() == before_rows and len(before_rows) == len(done_ids)
    assert {d: (out / "assets" / d[:2] / d / "asset.ply").stat().st_mtime_ns for d in plys} == plys
    rows = {r["asset_id"]: r for r in manifest.read(str(out)).to_pylist()}
    assert len(rows) == len(PROMPTS) and {r["status"] for r in rows.values()} == {"done"}
    k = rows[killed[0].name]
    assert k["resumed_from_iter"] == resume_at  # preemption: resumed from its last checkpoint
    meta = json.loads((killed[0] / "meta.json").read_text())
    assert meta["resumed_from"] == resume_at and meta["iterations"] == ITERS
    assert all(r["resumed_from_iter"] == 0 for a, r in rows.items() if a != killed[0].name)
    assert all(r["attempts"] == 1 for r in rows.values())
    assert open_storage(str(out)).orphan_temp_files() == [] and not (out / "run.lock").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and len(run["resumed_at"]) == 1  # the loser never wrote


class FakeNaNPrior:
    """Test double: the real tiny prior, but `eps` returns NaN on calls >= `start` (1-based),
    for `count` calls (None = forever)."""

    def __init__(self, inner, start: int, count: int | None):
        self.inner, self.start, self.count, self.calls, self.nans = inner, start, count, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def eps(self, z_t, t, emb):
        import torch

        self.calls += 1
        e = self.inner.eps(z_t, t, emb)
        if self.calls >= self.start and (self.count is None or self.nans < self.count):
            self.nans += 1
            return torch.full_like(e, float("nan"))
        return e


class FakeNaNGenerate:
    """Generation double: the real stages.generate.generate with a NaN-injecting prior by prompt."""

    def __init__(self, prior, plan: dict[str, tuple[int, int | None]]):
        self.prior, self.plan, self.used = prior, plan, {}

    def __call__(self, cfg, prompt, seed, asset_dir, progress=False):
        from stages.generate import generate

        start, count = self.plan.get(prompt, (10**9, 0))
        p = self.used[prompt] = FakeNaNPrior(self.prior, start, count)
        return generate(cfg, prompt, seed, asset_dir, progress=False, prior=p)


def test_nan_injection_is_caught_recorded_and_isolated(tmp_path, tiny_pixel_sd_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from stages.priors.registry import load_prior

    cfg = tiny_cfg(tiny_pixel_sd_dir, iterations=12)
    cfg.generate.nan_retries = 2
    prior = load_prior(cfg.prior, "cpu")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a nan once\na nan always\na clean cube\n")
    fake = FakeNaNGenerate(prior, {"a nan once": (7, 1), "a nan always": (3, None)})
    s = fakes.run_batch(fake, str(prompts), cfg, str(tmp_path / "out"), progress=False)
    assert (s.done, s.failed) == (2, 1)
    rows = {r["prompt"]: r for r in manifest.read(str(tmp_path / "out")).to_pylist()}
    meta = {p: json.loads((Path(rows[p]["asset_uri"]).parent / "meta.json").read_text())
            for p in ("a nan once", "a clean cube")}
    # recovered: rolled back to the last checkpoint (iteration 5) and retried with a new noise seed
    assert fake.used["a nan once"].nans == 1 and rows["a nan once"]["status"] == "done"
    assert meta["a nan once"]["retries"] == 1 and meta["a clean cube"]["retries"] == 0
    assert meta["a nan once"]["noise_seed"] != meta["a clean cube"]["noise_seed"]
    assert meta["a nan once"]["iterations"] == 12 and meta["a nan once"]["status"] == "done"
    # given up after nan_retries: a failed record with the guard's reason, no asset.ply
    bad = rows["a nan always"]
    assert bad["status"] == "failed" and fake.used["a nan always"].nans == 3
    assert re.search(r"generation failed: non-finite values at iteration \d+ \(distillation gradient "
                     r"is not finite\); gave up after 2 retries", bad["error"]), bad["error"]
    adir = open_storage(str(tmp_path / "out")).path("assets", bad["asset_id"][:2], bad["asset_id"])
    bad_meta = json.loads((Path(adir) / "meta.json").read_text())
    assert bad_meta["status"] == "failed" and "non-finite" in bad_meta["error"]
    assert not (Path(adir) / "asset.ply").exists()


def test_temp_files_of_killed_writes_are_removed(tmp_path, tiny_pixel_sd_dir):
    """What a SIGKILL between a temp write and its rename leaves (driver: '.tmp-*' at the root and
    in manifest/parts; generation: '*.tmp' in the asset folder) is removed by the next run, and
    the half-written checkpoint is never resumed from."""
    from pipeline.inputs import read_prompts

    cfg = tiny_cfg(tiny_pixel_sd_dir, iterations=6)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "out"
    st = open_storage(str(out))
    [req] = read_prompts(str(prompts), cfg).requests
    adir = Path(st.path("assets", req.asset_id[:2], req.asset_id))
    (adir / "checkpoints").mkdir(parents=True)
    planted = [out / ".tmp-run.json", out / "manifest" / "parts" / ".tmp-abc",
               adir / "asset.ply.tmp", adir / "checkpoints" / "ckpt_0000005.safetensors.tmp",
               adir / "checkpoints" / "ckpt_0000005.json.tmp"]
    for f in planted:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"half-written")
    assert len(st.orphan_temp_files()) == len(planted)
    assert all(".tmp" not in p for p in st.walk_files())  # never visible to readers
    s = run_batch(str(prompts), cfg, str(out), progress=False)
    assert s.done == 1 and st.orphan_temp_files() == []
    [r] = manifest.read(str(out)).to_pylist()
    assert r["resumed_from_iter"] == 0  # the uncommitted checkpoint was not used


# ------------------------------------------------------------------ issue 14 (round two)
def test_train_prior_never_writes_into_the_package_by_default(tmp_path, monkeypatch, capsys):
    """`sctd3d toy train-prior` defaulted --out to the shipped stages/toyworld/toy_sd (issue 14 item 2)."""
    from stages.priors.stable_diffusion import TOY_SD_DIR, TOY_SD_PIXEL_DIR
    from stages.toyworld import prior_training
    from stages.toyworld.prior_training import latent, pixel

    seen: list = []
    monkeypatch.setattr(latent, "train", lambda out, *a, **k: seen.append(("latent", out)) or
                        {"steps": 1, "final_loss_avg100": 0.0, "train_seconds": 0.0,
                         "scaling_factor": 1.0, "vae_rec_psnr_db": 0.0})
    monkeypatch.setattr(pixel, "train", lambda out, *a, **k: seen.append(("pixel", out)) or
                        {"steps": 1, "final_loss_avg100": 0.0, "train_seconds": 0.0})
    monkeypatch.chdir(tmp_path)
    assert prior_training.main(["--steps", "1"]) == 0
    assert prior_training.main(["--recipe", "pixel", "--steps", "1"]) == 0
    assert seen == [("latent", str(tmp_path.resolve() / "toy_sd_latent")),
                    ("pixel", str(tmp_path.resolve() / "toy_sd_pixel"))]
    for recipe, shipped in (("latent", TOY_SD_DIR), ("pixel", TOY_SD_PIXEL_DIR)):
        assert prior_training.main(["--recipe", recipe, "--out", str(shipped), "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert "sctd3d toy train-prior: error: --out" in err and "--force-package" in err
    assert len(seen) == 2  # nothing trained into the package
    assert prior_training.main(["--out", str(TOY_SD_DIR), "--force-package", "--steps", "1"]) == 0
    assert seen[-1] == ("latent", str(TOY_SD_DIR))


class CountingGenerate:
    """Generation double: writes asset.ply + meta.json, records each call's prompt; fails the
    prompts in `fail`; `hook(n)` runs before the n-th call (1-based)."""

    def __init__(self, fail=(), hook=None):
        self.calls: list[str] = []
        self.fail, self.hook = set(fail), hook

    def __call__(self, cfg, prompt, seed, asset_dir, progress=False):
        self.calls.append(prompt)
        if self.hook is not None:
            self.hook(len(self.calls))
        if prompt in self.fail:
            raise ValueError(f"CountingGenerate: NaN loss for {prompt!r}")
        d = Path(asset_dir)
        (d / "asset.ply").write_bytes(b"ply\n" + prompt.encode())
        (d / "meta.json").write_text(json.dumps({"prompt": prompt, "seed": seed}))
        return fakes.result(d)


def _fast_cfg():
    return load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                    "pipeline.report=false", "metrics.fid=false",
                                    "pipeline.backoff_s=0.01", "pipeline.max_attempts=1"])


def test_deleted_asset_is_redone_and_redo_modes(tmp_path):
    """A deleted asset.ply was skipped as 'already done' forever (issue 14 item 15)."""
    cfg, out = _fast_cfg(), str(tmp_path / "out")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\na green cone\n")
    g = CountingGenerate(fail={"a green cone"})
    s = fakes.run_batch(g, str(prompts), cfg, out, progress=False)
    assert (s.done, s.failed) == (2, 1)
    rows = {r["prompt"]: r for r in manifest.read(out).to_pylist()}
    Path(rows["a blue sphere"]["asset_uri"]).unlink()

    g = CountingGenerate(fail={"a green cone"})
    s = fakes.run_batch(g, str(prompts), cfg, out, progress=False, redo="missing")
    assert sorted(g.calls) == ["a blue sphere"] and s.skipped == 2  # the failed one is left alone
    assert Path(rows["a blue sphere"]["asset_uri"]).exists()
    g = CountingGenerate()
    fakes.run_batch(g, str(prompts), cfg, out, progress=False)  # default: failed retried
    assert g.calls == ["a green cone"]
    g = CountingGenerate()
    s = fakes.run_batch(g, str(prompts), cfg, out, progress=False, redo="all")
    assert sorted(g.calls) == ["a blue sphere", "a green cone", "a red cube"] and s.done == 3
    with pytest.raises(ValueError, match="--redo 'some'"):
        fakes.run_batch(g, str(prompts), cfg, out, progress=False, redo="some")


def test_run_survives_a_concurrent_compact(tmp_path):
    """`manifest compact` during a run is refused (the run holds the lock); a compaction that
    ignores the lock (another host on an object store) loses nothing either (issue 14 item 1)."""
    from common.lock import LockHeld

    cfg, out = _fast_cfg(), str(tmp_path / "out")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\na green cone\na yellow torus\n")
    refused = []

    def compact_now(n):
        if n in (2, 3):
            with pytest.raises(LockHeld, match="in use by another run") as e:
                manifest.compact(out)
            refused.append(str(e.value))
            manifest.compact_locked(open_storage(out))  # a lockless compaction mid-run

    s = fakes.run_batch(CountingGenerate(hook=compact_now), str(prompts), cfg, out, progress=False)
    assert s.done == 4 and len(refused) == 2
    assert manifest.counts(manifest.read(out)) == {"done": 4, "failed": 0, "rejected": 0}
    assert json.loads((Path(out) / "run.json").read_text())["status"] == "finished"
    # the run compacted its own parts at the end: later readers read one file
    assert list((Path(out) / "manifest" / "parts").iterdir()) == []


def test_moved_run_folder_keeps_its_asset_links(tmp_path):
    """Absolute URIs in the manifest broke a moved run's report (issue 14 item 16)."""
    cfg, out = _fast_cfg(), tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    fakes.run_batch(CountingGenerate(), str(prompts), cfg, str(out), progress=False)
    import pyarrow.parquet as pq

    raw = pq.read_table(out / "manifest" / "manifest.parquet").to_pylist()[0]
    assert raw["asset_uri"].startswith("assets/") and raw["asset_uri"].endswith("/asset.ply")
    moved = tmp_path / "moved"
    out.rename(moved)
    row = manifest.read(str(moved)).to_pylist()[0]
    assert row["asset_uri"] == str(moved / raw["asset_uri"]) and Path(row["asset_uri"]).is_file()
    g = CountingGenerate()  # the moved run resumes: its asset is found, nothing redone
    assert fakes.run_batch(g, str(prompts), cfg, str(moved), progress=False).skipped == 1
    assert g.calls == []


def test_fixed_prompt_supersedes_its_rejected_record(tmp_path):
    """Rejected records stayed after the input was fixed (issue 14 item 14)."""
    cfg, out = _fast_cfg(), str(tmp_path / "out")
    prompts, other = tmp_path / "p.jsonl", tmp_path / "other.txt"
    prompts.write_text(json.dumps({"prompt": "a red cube"}) + "\n" + json.dumps({"prompt": ""}) + "\n"
                       + json.dumps({"prompt": "a blue sphere", "seed": -1}) + "\n")
    other.write_text("a green cone\n\n")
    fakes.run_batch(CountingGenerate(), str(other), cfg, out, progress=False)
    s = fakes.run_batch(CountingGenerate(), str(prompts), cfg, out, progress=False)
    assert s.rejected == 2 and manifest.counts(manifest.read(out))["rejected"] == 3
    assert (Path(out) / "manifest" / "manifest.parquet").exists()  # the rejects are compacted
    prompts.write_text(json.dumps({"prompt": "a red cube"}) + "\n" + json.dumps({"prompt": "a yellow torus"})
                       + "\n" + json.dumps({"prompt": "a blue sphere", "seed": 1}) + "\n")
    s = fakes.run_batch(CountingGenerate(), str(prompts), cfg, out, progress=False)
    assert (s.done, s.rejected) == (2, 0)
    rows = manifest.read(out).to_pylist()
    rejected = [r for r in rows if r["status"] == "rejected"]
    assert [(r["input_uri"], r["input_line"]) for r in rejected] == [(str(other), 2)]  # other input's kept
    assert "rejected 1" in manifest.show(out)


def test_run_outputs_respect_the_umask(tmp_path):
    """Manifest, run.json and the rest were 0600 whatever the umask (issue 14 item 3)."""
    cfg, out = _fast_cfg(), tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n\n")
    old = os.umask(0o022)
    try:
        fakes.run_batch(CountingGenerate(), str(prompts), cfg, str(out), progress=False)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert "manifest/manifest.parquet" in modes and "run.json" in modes
    assert set(modes.values()) == {"0o644"}, modes
