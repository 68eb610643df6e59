"""`sctd3d evaluate` on a run never loses data (issue 26 items 2, 4, 5, 14) and re-scores through
the executor (issue 25, one orchestration): links out of the run are refused, a stop or a failing
asset leaves every asset as it was, metrics not recomputed are kept or marked stale, FID follows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import fakes
from cli_capture import run_cli
from common import manifest
from common.config import eval_hash, load_config
from export_fixtures import snapshot as _files
from kernels.ply import save_ply

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cube", "a green cube", "a blue cube"]
RUN = ["generate.iterations=3", "generate.save_ply_at=[]", "generate.checkpoint_every=0",
       "render.num_views=3", "render.resolution=16", "render.video=false", "metrics.metrics=[toy_psnr,toy_rprec]",
       "metrics.fid=false", "pipeline.report=false"]
NEW_ORBIT = ["render.num_views=4"]


def _small_asset(cfg, prompt, seed, asset_dir, progress=False):
    """A 150-Gaussian blob (renders in milliseconds; the toy metrics score it against the object)."""
    from export_fixtures import blob_scene

    save_ply(str(Path(asset_dir) / "asset.ply"), blob_scene(PROMPTS.index(prompt)))
    (Path(asset_dir) / "meta.json").write_text(json.dumps({"prompt": prompt, "seed": seed}))
    return fakes.result(asset_dir)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A finished run of 3 small toy assets, scored, made once."""
    from pipeline.run import run_batch

    base = tmp_path_factory.mktemp("evaluate")
    prompts = base / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = base / "run"
    with fakes.generating(_small_asset):
        s = run_batch(str(prompts), load_config("toy.yaml", RUN), str(out), progress=False)
    assert s.done == 3
    return out


@pytest.fixture()
def run(template, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(template, out, symlinks=True)
    # records name URIs relative to the root: the copy is a run of its own
    return out


def _records(out: Path) -> dict[str, dict]:
    return {r["asset_id"]: r for r in manifest.read(str(out)).to_pylist()}


def _adir(out: Path, aid: str) -> Path:
    return out / "assets" / aid[:2] / aid


def _cli_args(out: Path, extra: list[str]) -> list[str]:
    return ["evaluate", str(out), "--config", "toy.yaml",
            *sum((["--set", o] for o in RUN + extra), [])]


# ------------------------------------------------------------------ 2. links out of the run
def test_links_out_of_the_run_are_refused_and_never_followed(run, tmp_path):
    before = _records(run)
    a, b, c = sorted(before)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(_adir(run, a) / "frames", elsewhere)
    outside = _files(elsewhere)
    shutil.rmtree(_adir(run, a) / "frames")
    (_adir(run, a) / "frames").symlink_to(elsewhere)           # frames/ -> another folder
    moved = tmp_path / "moved"
    shutil.move(str(_adir(run, b)), moved)
    _adir(run, b).symlink_to(moved)                             # the asset folder -> elsewhere
    moved_files = _files(moved)

    code, stdout, err = run_cli(*_cli_args(run, NEW_ORBIT))
    assert code == 1, err
    assert _files(elsewhere) == outside and _files(moved) == moved_files
    assert f"asset {a} not re-scored" in err and "frames is a link out of the run" in err
    assert f"asset {b} not re-scored" in err and "the asset folder is a link out of the run" in err
    after = _records(run)
    assert after[a] == before[a] and after[b] == before[b]
    assert after[c]["eval_hash"] != before[c]["eval_hash"]
    assert len(list((_adir(run, c) / "frames").glob("*.png"))) == 4
    assert "rescored: 1" in stdout and "failed: 2" in stdout

    # the run's own metrics/ folder linked out of the run: refused before anything is written
    shutil.move(str(run / "metrics"), tmp_path / "metrics-elsewhere")
    (run / "metrics").symlink_to(tmp_path / "metrics-elsewhere")
    linked = _files(tmp_path / "metrics-elsewhere")
    code, _, err = run_cli(*_cli_args(run, ["render.num_views=5"]))
    assert code == 2 and err.count("\n") == 1 and "metrics is a link out of the run" in err
    assert _files(tmp_path / "metrics-elsewhere") == linked and _records(run) == after


# ------------------------------------------------------------------ 4. stop, missing file, bad metric
def test_missing_ply_and_a_metric_that_cannot_load_leave_assets_as_they_were(run):
    before = _records(run)
    a, b, c = sorted(before)
    (_adir(run, a) / "asset.ply").unlink()
    files = {aid: _files(_adir(run, aid)) for aid in before}
    code, _, err = run_cli(*_cli_args(run, NEW_ORBIT))
    assert code == 1 and f"asset {a} not re-scored" in err and "no asset.ply" in err
    after = _records(run)
    assert after[a] == before[a] and _files(_adir(run, a)) == files[a]
    assert {after[x]["eval_hash"] for x in (b, c)} == {eval_hash(load_config("toy.yaml", RUN + NEW_ORBIT))}

    # a metric whose weights cannot load: every asset fails alike, none is half-updated
    files = {aid: _files(_adir(run, aid)) for aid in (b, c)}
    before = _records(run)
    bad = NEW_ORBIT + ["render.num_views=5", "metrics.metrics=[clip_l]",
                       "metrics.clip_pretrained=/nonexistent/clip.pt"]
    code, stdout, err = run_cli(*_cli_args(run, bad))
    assert code == 1 and "failed: 3" in stdout and "rescored: 0" in stdout
    assert err.count("clip.pt") == 2 and "Traceback" not in err  # (the third: still no asset.ply)
    assert _records(run) == before
    for aid in (b, c):
        assert _files(_adir(run, aid)) == files[aid]
    assert not list(run.rglob(".tmp-evaluate-*")) and not (run / "run.lock").exists()


_BLOCKING_DRIVER = """
import sys, time
import stages.render as render
from common import deadline

real, calls = render.render_asset, [0]

def render_asset(cfg, asset_dir, prompt):  # the 2nd asset renders, then waits for the stop
    out = real(cfg, asset_dir, prompt)
    calls[0] += 1
    if calls[0] == 2:
        print("BLOCKING in the second asset", file=sys.stderr, flush=True)
        while True:
            deadline.check("test: blocked render")
            time.sleep(0.02)
    return out

render.render_asset = render_asset
from pipeline.cli import main
main(sys.argv[1:])
"""


def test_sigterm_mid_evaluate_releases_the_lock_and_the_rerun_finishes(run, tmp_path):
    before = _records(run)
    files = {aid: _files(_adir(run, aid)) for aid in before}
    driver = tmp_path / "driver.py"
    driver.write_text(_BLOCKING_DRIVER)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.Popen([sys.executable, str(driver), *_cli_args(run, NEW_ORBIT)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    blocked = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "BLOCKING" in line:
                blocked.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert blocked.wait(300), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        reader.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert "stopped by SIGTERM: 1 asset(s) re-scored, 2 left; re-run the same command" in err
    assert not (run / "run.lock").exists() and not list(run.rglob(".tmp-evaluate-*"))
    after = _records(run)
    new = eval_hash(load_config("toy.yaml", RUN + NEW_ORBIT))
    moved = [aid for aid in after if after[aid]["eval_hash"] == new]
    assert len(moved) == 1
    for aid in set(after) - set(moved):  # the stopped one and the one not started: as they were
        assert after[aid] == before[aid] and _files(_adir(run, aid)) == files[aid]
    assert json.loads((run / "run.json").read_text())["evaluate"]["status"] == "interrupted"

    code, stdout, err = run_cli(*_cli_args(run, NEW_ORBIT))  # the same command finishes the job
    assert code == 0 and "rescored: 2" in stdout and "unchanged: 1" in stdout, err
    assert {r["eval_hash"] for r in _records(run).values()} == {new}
    for aid in after:
        assert len(list((_adir(run, aid) / "frames").glob("*.png"))) == 4


# ------------------------------------------------------------------ 5. keep or mark stale
def test_rescoring_a_subset_keeps_unchanged_metrics_and_marks_changed_ones_stale(run):
    before = _records(run)
    assert all(r["toy_rprec"] is not None and r["toy_psnr"] is not None for r in before.values())
    # only toy_psnr, nothing toy_rprec reads changed: toy_rprec is kept
    code, stdout, err = run_cli(*_cli_args(run, ["metrics.metrics=[toy_psnr]"]))
    assert code == 0, err
    assert "kept_toy_rprec: 3" in stdout
    after = _records(run)
    for aid, r in after.items():
        assert r["toy_rprec"] == before[aid]["toy_rprec"]
        assert r["toy_psnr"] == pytest.approx(before[aid]["toy_psnr"])  # same orbit, same score
        saved = json.loads((_adir(run, aid) / "metrics.json").read_text())
        assert saved["values"]["toy_rprec"] == before[aid]["toy_rprec"] and saved["kept"] == ["toy_rprec"]

    # a new orbit changes what toy_rprec reads: stale, not silently missing
    code, stdout, err = run_cli(*_cli_args(run, ["metrics.metrics=[toy_psnr]"] + NEW_ORBIT))
    assert code == 0, err
    assert "stale_toy_rprec: 3" in stdout and "toy_rprec is stale on 3 asset(s)" in err
    for aid, r in _records(run).items():
        assert r["toy_rprec"] is None
        saved = json.loads((_adir(run, aid) / "metrics.json").read_text())
        assert saved["stale"]["toy_rprec"] == before[aid]["toy_rprec"]
        assert saved["reasons"]["toy_rprec"].startswith("stale: scored with other settings "
                                                        "(render.num_views: 3 -> 4)")
    summary = json.loads((run / "metrics" / "evaluate.json").read_text())
    assert all(a["stale"] == ["toy_rprec"] for a in summary["assets"].values())

    # asked for again: recomputed on the new orbit
    code, stdout, err = run_cli(*_cli_args(run, NEW_ORBIT))
    assert code == 0, err
    assert all(r["toy_rprec"] is not None for r in _records(run).values())


# ------------------------------------------------------------------ 14. FID follows the evaluation
def test_evaluate_clears_a_fid_it_no_longer_holds(run):
    from stages.report.data import load_run

    info = json.loads((run / "run.json").read_text())
    info["fid"] = {"fid": 12.5, "reference": "prior"}
    (run / "run.json").write_text(json.dumps(info))
    (run / "metrics").mkdir(exist_ok=True)
    (run / "metrics" / "fid.json").write_text(json.dumps({"fid": 12.5}))
    assert load_run(str(run)).fid == 12.5  # what the report reads
    code, _, err = run_cli(*_cli_args(run, NEW_ORBIT))  # metrics.fid=false in RUN
    assert code == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["fid"]["fid"] is None and info["fid"]["reason"] == "metrics.fid is false"
    assert info["evaluate"]["status"] == "finished" and info["evaluate"]["rescored"] == 3
    assert load_run(str(run)).fid is None


# ------------------------------------------------------------------ issue 25: on Ray workers
def test_evaluate_rescores_on_ray_workers(run, ray_local):
    code, stdout, err = run_cli(*_cli_args(run, NEW_ORBIT), "--executor", "ray", "--num-workers", "2")
    assert code == 0, err
    assert "rescored: 3" in stdout
    summary = json.loads((run / "metrics" / "evaluate.json").read_text())
    workers = {a["worker"] for a in summary["assets"].values()}
    assert all(w.rsplit(":", 1)[1] != str(os.getpid()) for w in workers), workers
    new = eval_hash(load_config("toy.yaml", RUN + NEW_ORBIT))
    assert {r["eval_hash"] for r in _records(run).values()} == {new}
    for aid in _records(run):
        assert len(list((_adir(run, aid) / "frames").glob("*.png"))) == 4
