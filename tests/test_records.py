"""The per-asset contract: typed results in, one manifest record out (pipeline.records), and the
one list of per-asset metric names (common.manifest.METRIC_COLUMNS) every reader uses."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import subprocess
from pathlib import Path

import pytest

import fakes
from common import manifest
from common.config import ConfigError, load_config
from pipeline.inputs import read_prompts
from pipeline.records import Timing, committed, record_from
from stages.metrics import MetricScores
from stages.render import RenderResult


def _req(tmp_path, cfg):
    p = tmp_path / "p.txt"
    p.write_text("a red cube\n")
    return read_prompts(str(p), cfg).requests[0]


def test_record_from_fills_the_schema_from_typed_results(tmp_path):
    cfg = load_config("toy.yaml")
    req = _req(tmp_path, cfg)
    adir = tmp_path / "a"
    gen = fakes.result(adir, num_gaussians=7, resumed_from=300, device="cuda:H200", wall_s=12.5,
                       renderer="gsplat")
    render = RenderResult(frames_uri=str(adir / "frames"), video_uri=None,
                          sheet_uri=str(adir / "sheet.png"), num_frames=4)
    scores = MetricScores({k: 0.5 for k in manifest.METRIC_COLUMNS})
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    timing = Timing(started_at=t, finished_at=t, wall_s=13.0, worker="h:1", device="cpu")
    rec = record_from(req, cfg, gen, render, scores, timing, lambda p: p and f"s3://b/{Path(p).name}",
                      "evalhash")
    assert set(rec) <= set(manifest.COLUMNS)
    assert (rec["num_gaussians"], rec["resumed_from_iter"], rec["renderer"]) == (7, 300, "gsplat")
    assert rec["device"] == "cuda:H200" and rec["gpu_s"] == 12.5  # generation's own device wins
    assert rec["asset_uri"] == "s3://b/asset.ply" and rec["frames_uri"] == "s3://b/frames"
    assert rec["video_uri"] is None and rec["eval_hash"] == "evalhash"
    assert all(rec[k] == 0.5 for k in manifest.METRIC_COLUMNS)
    done = committed(rec, req, attempts=2, code_version="v")
    row = manifest.to_table([done]).to_pylist()[0]
    assert row["status"] == "done" and row["attempts"] == 2 and row["input_line"] == 1
    # no render / score stage: the URI and metric columns are null, not made up
    cpu = record_from(req, cfg, fakes.result(adir), None, None, timing, lambda p: p, None)
    assert cpu["gpu_s"] is None and cpu["device"] == "cpu" and cpu["frames_uri"] is None
    assert all(cpu[k] is None for k in manifest.METRIC_COLUMNS)


def test_metric_names_have_one_home():
    from stages import metrics
    from stages.report import data as report_data
    from stages.export import index

    cols = manifest.METRIC_COLUMNS
    assert set(cols) <= set(manifest.COLUMNS)
    assert metrics.PER_ASSET is cols and report_data.PER_ASSET_METRICS is cols and index.METRICS is cols
    with pytest.raises(ConfigError, match="unknown metric 'toy_iou'"):
        load_config("toy.yaml", ["metrics.metrics=[toy_iou]"])


def test_a_generator_must_return_a_generate_result(tmp_path, monkeypatch):
    """The contract is typed: a generator returning a dict (what the old test fakes returned)
    fails its asset with a clear reason instead of being duck-typed into a record."""
    from pipeline.run import run_batch

    def dict_generate(cfg, prompt, seed, asset_dir, progress=False):
        (Path(asset_dir) / "asset.ply").write_bytes(b"ply\n")
        return {"num_gaussians": 1, "device": "cpu"}

    fakes.use_generate(monkeypatch, dict_generate)
    cfg = load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                   "pipeline.report=false", "metrics.fid=false"])
    p = tmp_path / "p.txt"
    p.write_text("a red cube\n")
    s = run_batch(str(p), cfg, str(tmp_path / "out"), progress=False)
    assert s.failed == 1
    [row] = manifest.read(str(tmp_path / "out")).to_pylist()
    assert "generate returned dict, not a GenerateResult" in row["error"]


def test_token_limit_comes_from_the_prior_tokenizer_alone(tiny_sd_dir, tmp_path):
    from stages.priors.registry import token_limit

    cfg = load_config("toy.yaml", ["prior.name=stable_diffusion", f"prior.model={tiny_sd_dir}"])
    count, limit = token_limit(cfg.prior)
    assert limit == 16 and count("a red cube") > 2
    assert token_limit(load_config("toy.yaml", ["prior.name=toy_exact"]).prior) == (None, None)
    bare = tmp_path / "no_tokenizer"
    bare.mkdir()
    cfg = load_config("toy.yaml", ["prior.name=stable_diffusion", f"prior.model={bare}"])
    assert token_limit(cfg.prior) == (None, None)  # logged; prompts still get the character cap


@contextlib.contextmanager
def _read_only(where: Path):
    """`where` as a read-only folder: a read-only tmpfs (root), else permissions."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.strip()}")
        where.chmod(0o555)
    try:
        yield
    finally:
        if r.returncode == 0:
            subprocess.run(["umount", "-l", str(where)], check=True)
        else:
            where.chmod(0o755)


def test_a_refused_record_commit_is_one_clear_line(tmp_path, monkeypatch):
    """Every record a run commits goes through pipeline.records (the one writer): when the store
    refuses it (the manifest's parts folder read-only), the run stops with one StorageError line
    naming the record, the root, the OS reason and what to do; the asset's files are kept. Both
    kinds of record: a rejected input row (records.commit_many) and a generated asset (commit)."""
    from common.storage import StorageError
    from pipeline.run import run_batch

    def gen(cfg, prompt, seed, asset_dir, progress=False):
        Path(asset_dir).mkdir(parents=True, exist_ok=True)
        (Path(asset_dir) / "asset.ply").write_bytes(b"ply\n")
        return fakes.result(asset_dir)

    fakes.use_generate(monkeypatch, gen)
    cfg = load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                   "pipeline.report=false", "metrics.fid=false"])
    for name, lines, what in [("rejected", "a red cube\n\n", r"1 manifest record\(s\) \(rejected-[0-9a-f]+\)"),
                              ("asset", "a red cube\n", r"the manifest record of asset [0-9a-f]+")]:
        p, out = tmp_path / f"{name}.txt", tmp_path / name
        p.write_text(lines)
        with _read_only(out / manifest.PARTS_DIR):
            with pytest.raises(StorageError) as e:
                run_batch(str(p), cfg, str(out), progress=False)
        msg = str(e.value)
        assert "\n" not in msg and re.match(
            rf"cannot commit {what} under {re.escape(str(out))}: (Read-only file system|Permission "
            rf"denied); free space or fix permissions, then re-run the same command", msg), msg
        assert not list((out / manifest.PARTS_DIR).iterdir())  # nothing half-written
    assert list((tmp_path / "asset" / "assets").glob("*/*/asset.ply"))  # the asset's files are kept
