"""gsplat fallback: a failed gsplat build is tried once per process and warned about once, and the
renderer actually used is recorded in meta.json and the manifest's `renderer` column."""

import json
import logging
import sys
import types
from pathlib import Path

import torch

import kernels.render as kr


def _broken_gsplat_extension(monkeypatch) -> dict:
    """gsplat.cuda._backend whose compiled `_C` fails to load (as a failed JIT build does);
    counts the load attempts."""
    seen = {"attempts": 0}
    mod = types.ModuleType("gsplat.cuda._backend")

    def __getattr__(name):
        if name == "_C":
            seen["attempts"] += 1
            raise ImportError("gsplat: CUDA extension build failed (nvcc not found)")
        raise AttributeError(name)

    mod.__getattr__ = __getattr__
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kr, "_GSPLAT", {})  # a fresh process: nothing tried yet
    return seen


def test_failed_gsplat_build_is_tried_once_and_warned_once(monkeypatch, caplog):
    seen = _broken_gsplat_extension(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kernels.render"):
        results = [kr.gsplat_available() for _ in range(5)]
        backends = [kr.resolve_backend("auto", "cuda") for _ in range(5)]
    assert results == [False] * 5 and backends == ["torch"] * 5
    assert seen["attempts"] == 1
    warnings = [r for r in caplog.records if "gsplat CUDA extension unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "nvcc not found" in warnings[0].getMessage()
    assert "renderer=torch" in warnings[0].getMessage()
    # explicit choices and CPU tensors never consult gsplat
    assert kr.resolve_backend("torch", "cuda") == "torch" and kr.resolve_backend("auto", "cpu") == "torch"
    assert kr.resolve_backend("gsplat", "cuda") == "gsplat" and seen["attempts"] == 1


def test_renderer_recorded_in_meta_and_manifest(tmp_path):
    """A real (tiny, toy-world) generation through the pipeline records the renderer it used."""
    from common import manifest
    from common.config import load_config
    from pipeline.run import run_batch

    cfg = load_config("toy.yaml", [
        "prior.image_size=16", "init.method=ball", "init.ball_num_gaussians=100",
        "generate.iterations=2", "generate.batch_views=1", "generate.checkpoint_every=0",
        "generate.save_ply_at=[2]", "pipeline.render=false", "pipeline.score=false",
        "pipeline.report=false", "metrics.fid=false"])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    s = run_batch(str(prompts), cfg, str(tmp_path / "out"), progress=False)
    assert s.done == 1, s.line()
    [rec] = manifest.read(str(tmp_path / "out")).to_pylist()
    assert rec["renderer"] == "torch"  # CPU tensors: the torch backend
    meta = json.loads((Path(rec["asset_uri"]).parent / "meta.json").read_text())
    assert meta["renderer"] == "torch" and meta["device"] == "cpu"
    assert "renderer" in manifest.COLUMNS


def test_report_run_summary_shows_the_renderers():
    """A silent fallback is visible in the report: the run summary counts assets per renderer."""
    import pandas as pd

    from stages.report import RunData
    from stages.report.html import _summary_section

    df = pd.DataFrame({"asset_id": ["a", "b", "c", "d"], "status": ["done", "done", "done", "failed"],
                       "method": ["sctd"] * 4, "device": ["cuda:NVIDIA H200"] * 4,
                       "renderer": ["gsplat", "torch", "gsplat", None]})
    run = RunData(uri="r", root="r", df=df, label="r")
    assert run.summary()["renderers"] == {"gsplat": 2, "torch": 1}
    html = _summary_section(run, None)
    assert "<th>renderer</th>" in html.replace(' class=""', "") and "gsplat (2), torch (1)" in html
    old = RunData(uri="o", root="o", df=df.drop(columns=["renderer"]), label="o")  # an older manifest
    assert old.summary()["renderers"] == {}
