"""The per-asset timeout derived from the config (issue 20, item 3): with pipeline.timeout_s_per_it (the
cluster GPU's seconds per iteration) it is timeout_margin x generate.iterations x s/it +
timeout_overhead_s; otherwise pipeline.timeout_s. An asset that runs past it fails with a manifest
record that says it timed out, with the limit it had and the time it ran; run.json records the limit."""

from __future__ import annotations

import json
import time

import fakes
from common import deadline, manifest
from common.config import load_config
from common.storage import open_storage
from pipeline.run import asset_timeout_s


def _cfg(*extra):
    return load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false", "pipeline.report=false",
                                    "metrics.fid=false", *extra])


def test_timeout_rule():
    assert asset_timeout_s(_cfg("pipeline.timeout_s=1800")) == 1800.0  # pipeline.timeout_s
    assert asset_timeout_s(_cfg("pipeline.timeout_s=0")) == 0.0  # none
    # an A10G at the paper's 5000 iterations (README: ~1.4 s/it): 2 x 5000 x 1.4 + 600
    a10g = _cfg("generate.iterations=5000", "pipeline.timeout_s_per_it=1.4")
    assert asset_timeout_s(a10g) == 2 * 5000 * 1.4 + 600
    assert asset_timeout_s(_cfg("generate.iterations=100", "pipeline.timeout_s_per_it=0.5",
                                "pipeline.timeout_margin=3", "pipeline.timeout_overhead_s=0")) == 150.0


def never_finishes(cfg, prompt, seed, asset_dir, progress=False):
    end = time.monotonic() + 60  # bounded even if no limit applies
    while time.monotonic() < end:
        deadline.check("fake iteration")  # where the real loop checks (each iteration)
        time.sleep(0.01)
    raise AssertionError("the per-asset timeout never fired")


def test_an_asset_past_its_derived_timeout_says_so_in_the_manifest(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "out"
    cfg = _cfg("generate.iterations=10", "pipeline.timeout_s_per_it=0.01", "pipeline.timeout_margin=1",
               "pipeline.timeout_overhead_s=0.5")  # 1 x 10 x 0.01 + 0.5 = 0.6 s
    s = fakes.run_batch(never_finishes, str(prompts), cfg, str(out), progress=False)
    assert s.failed == 1 and s.done == 0
    rec = manifest.read(open_storage(str(out))).to_pylist()[0]
    assert rec["status"] == "failed" and rec["attempts"] == 1  # not retried
    assert "timeout: exceeded 0.6 s per-asset limit" in rec["error"] and rec["wall_s"] >= 0.6
    assert json.loads((out / "run.json").read_text())["asset_timeout_s"] == 0.6
