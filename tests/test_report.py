"""`sctd3d report`: regression decision, summary.json, history trends, HTML content (no browser)."""

from __future__ import annotations

import base64
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from common.config import ReportConfig
from report_fixtures import make_run
from stages import regression
from stages.report import ReportError, build_report, load_run, main


def _cfg(**kw) -> ReportConfig:
    kw.setdefault("n_boot", 500)
    return ReportConfig(**kw)


def _report(tmp_path, run, **kw):
    out = str(tmp_path / "out" / "report.html")
    code = build_report(run, out, cfg=kw.pop("cfg", _cfg()), **kw)
    with open(tmp_path / "out" / "summary.json") as fh:
        summary = json.load(fh)
    with open(out, encoding="utf-8") as fh:
        page = fh.read()
    return code, summary, page


def _png_std(data_uri: str) -> float:
    raw = base64.b64decode(data_uri.split(",", 1)[1])
    return float(np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=float).std())


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.random.default_rng(0).normal(1.0, 2.0, size=40)
    a = regression.bootstrap_mean_ci(x, 1000, 0.95, seed=7)
    b = regression.bootstrap_mean_ci(x, 1000, 0.95, seed=7)
    c = regression.bootstrap_mean_ci(x, 1000, 0.95, seed=8)
    assert a == b and a != c
    mean, lo, hi = a
    assert lo < mean < hi
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.35 * (2 * 1.96 * se)  # close to the normal interval


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        regression.bootstrap_mean_ci([1.0, float("nan")], 10, 0.95, 0)
    with pytest.raises(ValueError, match="non-empty"):
        regression.bootstrap_mean_ci([], 10, 0.95, 0)


def test_decide_direction_and_rules():
    base = np.linspace(0, 10, 30)
    worse = base - 1.0 + np.random.default_rng(1).normal(0, 0.1, 30)
    d = regression.decide("clip_l", worse, base, threshold=0.5, n_boot=500, confidence=0.95, seed=0)
    assert d.status == "regressed" and d.regressed and d.n == 30
    # FID: lower is better, so the same numbers are an improvement
    d = regression.decide("fid", worse, base, threshold=0.5, n_boot=500, confidence=0.95, seed=0)
    assert d.status == "improved" and not d.regressed and d.direction == "lower"
    # a drop smaller than the threshold is not a regression under either rule
    small = base - 0.3
    for rule in regression.RULES:
        d = regression.decide("clip_l", small, base, threshold=0.5, n_boot=200, confidence=0.95, seed=0, rule=rule)
        assert not d.regressed, rule
    # too few pairs never gate
    d = regression.decide("clip_l", base[:2] - 5, base[:2], threshold=0.5, n_boot=200, confidence=0.95,
                          seed=0, min_pairs=3)
    assert d.status == "insufficient" and not d.regressed
    with pytest.raises(ValueError, match="rule"):
        regression.decide("clip_l", base, base, threshold=0.5, n_boot=10, confidence=0.9, seed=0, rule="vibes")


# ---------------------------------------------------------------------------------------------
# end-to-end decisions on synthetic manifests
# ---------------------------------------------------------------------------------------------
def test_known_shift_is_flagged(tmp_path):
    base = make_run(str(tmp_path / "base"), noise_seed=1)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, shift={"clip_l": -2.0})
    code, s, _ = _report(tmp_path, run, baseline=base)
    assert code == 1
    assert s["regressed"] is True and s["regressed_metrics"] == ["clip_l"]
    m = s["metrics"]["clip_l"]
    assert m["status"] == "regressed" and m["n"] == 24
    assert m["ci"][0] <= m["mean_diff"] <= m["ci"][1] < -0.5
    assert abs(m["mean_diff"] + 2.0) < 0.3
    assert s["metrics"]["toy_psnr"]["regressed"] is False


@pytest.mark.parametrize("noise_seed", [2, 3, 4, 5, 6])
def test_unshifted_run_is_not_flagged(tmp_path, noise_seed):
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=noise_seed, day=1, images=False)
    code, s, _ = _report(tmp_path, run, baseline=base)
    assert code == 0 and s["regressed"] is False and s["regressed_metrics"] == []
    assert all(not m["regressed"] for m in s["metrics"].values())


@pytest.mark.parametrize("rule", regression.RULES)
@pytest.mark.parametrize("noise_seed", [11, 12, 13])
def test_small_noisy_unshifted_run_is_not_flagged(tmp_path, rule, noise_seed):
    # 6 prompts, paired differences with a spread several times the threshold
    base = make_run(str(tmp_path / "base"), n_prompts=6, noise=1.5, noise_seed=10, images=False)
    run = make_run(str(tmp_path / "run"), n_prompts=6, noise=1.5, noise_seed=noise_seed, day=1, images=False)
    code, s, _ = _report(tmp_path, run, baseline=base, cfg=_cfg(rule=rule))
    assert code == 0 and not s["regressed"]
    m = s["metrics"]["clip_l"]
    assert m["n"] == 6 and m["ci"][1] - m["ci"][0] > 0.5, "the case must be noisy relative to the threshold"


def test_improvement_is_not_a_regression(tmp_path):
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, shift={"toy_psnr": 2.0}, images=False)
    code, s, _ = _report(tmp_path, run, baseline=base)
    assert code == 0 and s["metrics"]["toy_psnr"]["status"] == "improved"


def test_pairs_only_shared_assets_and_failures_lower_done_rate(tmp_path):
    base = make_run(str(tmp_path / "base"), n_prompts=20, noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), n_prompts=24, noise_seed=2, day=1, images=False,
                   fail={0, 1, 2, 3, 4, 5, 6, 7})
    code, s, page = _report(tmp_path, run, baseline=base)
    assert s["n_paired"] == 20
    assert s["metrics"]["clip_l"]["n"] == 12          # 20 shared minus 8 failed
    assert s["run"]["counts"] == {"done": 16, "failed": 8, "rejected": 0, "total": 24}
    assert s["metrics"]["done_rate"]["regressed"] is True and code == 1
    assert "NaN loss at iteration 120" in page and 'id="failure-reasons"' in page


def test_metric_missing_in_run_is_flagged(tmp_path):
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, images=False, metric_cols=("clip_l", "toy_psnr"))
    code, s, _ = _report(tmp_path, run, baseline=base)
    assert s["metrics"]["toy_rprec"]["status"] == "missing" and code == 1


def _set_level(root, **rec):
    os.makedirs(os.path.join(root, "metrics"), exist_ok=True)
    with open(os.path.join(root, "metrics", "fid.json"), "w") as fh:
        json.dump(rec, fh)


def test_fid_point_estimate_is_shown_with_n_and_never_gates(tmp_path):
    """Issue 24.1: a clean other-seed night's FID 277.76 -> 289.03 (60 vs 60 images) alarmed on a point
    estimate. FID is now shown with its image counts and never decides; KID with its SE decides."""
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, images=False)
    _set_level(base, fid=277.76, n_generated=60, n_reference=60)
    _set_level(run, fid=289.03, n_generated=60, n_reference=60)
    code, s, page = _report(tmp_path, run, baseline=base, cfg=_cfg(thresholds={"fid": 2.0, "toy_psnr": 0.5}))
    f = s["metrics"]["fid"]
    assert code == 0 and not f["regressed"] and f["status"] == "worse" and "n = 60 vs 60" in f["note"]
    assert "report.thresholds.fid is ignored" in f["note"]
    assert "(n=60 vs 60 ref.)" in page and s["run"]["fid_n_generated"] == 60


def test_kid_decides_on_its_standard_error(tmp_path):
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, images=False)
    n = dict(kid_n_images=288, kid_n_assets=6)
    _set_level(base, fid=50.0, kid=0.020, kid_se=0.002, **n)
    # worse by 0.010 with SEs 0.002 each: CI [0.0045, 0.0155] lies beyond a threshold of 0.004
    _set_level(run, fid=52.0, kid=0.030, kid_se=0.002, **n)
    code, s, page = _report(tmp_path, run, baseline=base, cfg=_cfg(thresholds={"kid": 0.004}))
    k = s["metrics"]["kid"]
    assert code == 1 and k["regressed"] and abs(k["mean_diff"] - 0.01) < 1e-12
    assert k["ci"][0] > 0.004 and "288" in k["note"] and "6 assets" in k["note"]
    # the same difference with large SEs (noisy small nights) is not an alarm
    _set_level(run, fid=52.0, kid=0.030, kid_se=0.008, **n)
    code, s, _ = _report(tmp_path, run, baseline=base, cfg=_cfg(thresholds={"kid": 0.004}))
    assert code == 0 and s["metrics"]["kid"]["status"] == "ok"
    # no SE (one asset): never gated
    _set_level(run, kid=0.5, kid_n_images=48, kid_n_assets=1)
    code, s, _ = _report(tmp_path, run, baseline=base, cfg=_cfg(thresholds={"kid": 0.004}))
    assert code == 0 and s["metrics"]["kid"]["status"] == "insufficient"


def test_history_draws_a_trend_and_uses_the_newest_earlier_run_as_baseline(tmp_path):
    hist = tmp_path / "runs"
    # names sort differently from run times: ordering must follow run time
    days = {"c-night": 0, "a-night": 1, "b-night": 2}
    for name, day in days.items():
        make_run(str(hist / name), day=day, noise_seed=day, images=False, shift={"clip_l": 0.5 * day})
    run = make_run(str(hist / "today"), day=3, noise_seed=9, images=False, shift={"clip_l": 1.5})
    code, s, page = _report(tmp_path, run, history=str(hist))
    assert [t["label"].split(" ")[0] for t in s["trend"]] == ["c-night", "a-night", "b-night", "today"]
    means = [t["methods"]["sctd"]["clip_l"]["mean"] for t in s["trend"]]
    assert np.all(np.diff(means) > 0.2)                          # the upward trend is recorded
    assert s["baseline"]["label"].startswith("b-night") and code == 0
    uris = re.findall(r'id="plot-trend-clip_l"[^>]*src="(data:image/png;base64,[^"]+)"', page)
    assert len(uris) == 1 and _png_std(uris[0]) > 10.0
    assert 'id="plot-trend-done_rate"' in page


def test_summary_json_content(tmp_path):
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, shift={"toy_rprec": -0.2}, images=False)
    code, s, _ = _report(tmp_path, run, baseline=base, cfg=_cfg(seed=3, n_boot=300))
    assert s["schema_version"] == 1 and s["report_html"] == "report.html"
    assert s["decision"]["n_boot"] == 300 and s["decision"]["seed"] == 3
    assert s["decision"]["thresholds"]["toy_rprec"] == 0.05
    assert set(s["metrics"]) == {"clip_l", "toy_psnr", "toy_rprec", "done_rate"}
    for name, m in s["metrics"].items():
        assert {"mean_diff", "ci", "n", "regressed", "threshold", "status", "direction"} <= set(m)
        assert m["ci"][0] <= m["mean_diff"] <= m["ci"][1], name
        assert m["regressed"] == (m["status"] == "regressed")
    assert s["regressed_metrics"] == ["toy_rprec"] and code == 1
    r = s["run"]
    assert r["counts"]["done"] == 24 and r["asset_wall_s"] == 24 * 150.0 and r["gpu_hours"] == 0.0
    # deterministic: the same inputs give the same decisions
    _, s2, _ = _report(tmp_path, run, baseline=base, cfg=_cfg(seed=3, n_boot=300))
    assert s2["metrics"] == s["metrics"]


def test_page_is_self_contained_with_thumbnails(tmp_path):
    base = make_run(str(tmp_path / "base"), noise_seed=1)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, shift={"clip_l": -2.0})
    _, _, page = _report(tmp_path, run, baseline=base, cfg=_cfg(top_movers=3))
    # every resource is inline or a file of the report folder (no scheme, no absolute path, no '..')
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    local = [r for r in refs if not r.startswith("data:")]
    assert local and all(re.fullmatch(r"[A-Za-z0-9_]+(/[A-Za-z0-9_.-]+)*\.[a-z]+", r) for r in local), local
    assert all((tmp_path / "out" / r).is_file() for r in local), local
    thumbs = re.findall(r'class="thumb" id="thumb-(?:run|base)-\d+"[^>]*src="(data:[^"]+)"', page)
    assert len(thumbs) == 6 and all(_png_std(t) > 10 for t in thumbs)
    assert 'id="regression-table"' in page and 'id="method-table"' in page and 'id="prompt-table"' in page


def test_placeholders_when_renders_are_absent(tmp_path):
    run = make_run(str(tmp_path / "run"), noise_seed=2, images=False)
    code, s, page = _report(tmp_path, run, cfg=_cfg(top_movers=2))
    assert code == 0 and s["baseline"] is None and s["metrics"] == {}
    assert page.count('class="placeholder"') == 2 and 'class="thumb"' not in page
    assert 'id="plot-dist-clip_l"' in page                # a plot even without a baseline


def test_manifest_locations(tmp_path):
    run = make_run(str(tmp_path / "run"), noise_seed=2, images=False, compact=True)
    a = load_run(run)
    b = load_run(os.path.join(run, "manifest"))
    c = load_run(os.path.join(run, "manifest", "manifest.parquet"))
    assert len(a.df) == len(b.df) == len(c.df) == 24
    assert a.root == b.root == c.root == run


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ReportError, match="manifest not found"):
        build_report(str(tmp_path / "nope"), str(tmp_path / "r.html"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no manifest under"):
        build_report(str(tmp_path / "empty"), str(tmp_path / "r.html"))
    run = make_run(str(tmp_path / "run"), images=False)
    with pytest.raises(ReportError, match="expected an .html path"):
        build_report(run, str(tmp_path / "r.txt"))
    with pytest.raises(ReportError, match="thresholds.clip_l"):
        build_report(run, str(tmp_path / "r.html"), cfg=_cfg(thresholds={"clip_l": -1}))
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ReportError, match="cannot read manifest part"):
        build_report(str(bad), str(tmp_path / "r.html"))


def test_cli_exit_codes(tmp_path, capsys):
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, shift={"clip_l": -2.0}, images=False)
    out = str(tmp_path / "o" / "report.html")
    assert main([run, "--baseline", base, "--out", out, "--set", "report.n_boot=200"]) == 1
    assert main([run, "--baseline", base, "--out", out, "--set", "report.thresholds={clip_l: 5.0}"]) == 0
    assert main([str(tmp_path / "missing"), "--out", out]) == 2
    assert "manifest not found" in capsys.readouterr().err  # errors go to stderr


def test_nightly_toy_config_gates_toy_metrics(tmp_path):
    from common.config import load_config

    cfg = load_config("configs/nightly_toy.yaml")
    assert cfg.prior.name == "toy_sd" and cfg.generate.seed == 0
    assert {"toy_psnr", "toy_rprec", "done_rate"} <= set(cfg.report.thresholds)
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, shift={"toy_psnr": -1.5}, images=False)
    out = str(tmp_path / "o" / "report.html")
    assert build_report(run, out, baseline=base, cfg=cfg) == 1
    with open(tmp_path / "o" / "summary.json") as fh:
        assert json.load(fh)["regressed_metrics"] == ["toy_psnr"]


def test_read_manifest_keeps_done_over_later_failed(tmp_path):
    """Same dedup rule as common.manifest: a committed `done` beats a later `failed` record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stages.report import read_manifest

    parts = tmp_path / "manifest" / "parts"
    parts.mkdir(parents=True)
    base = {"asset_id": "a1", "prompt": "a red cube", "seed": 0, "method": "sds", "schema_version": 2}
    pq.write_table(pa.Table.from_pylist([{**base, "status": "done", "toy_psnr": 20.0,
                                          "finished_at": "2026-11-25T10:00:00+00:00"}]), parts / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{**base, "status": "failed", "toy_psnr": None,
                                          "finished_at": "2026-11-25T11:00:00+00:00"}]), parts / "b.parquet")
    _, df = read_manifest(str(tmp_path))
    assert len(df) == 1 and df.loc[0, "status"] == "done" and df.loc[0, "toy_psnr"] == 20.0


# ----------------------------------------------------------------------------------------------
# Issue 24.2: other seeds pair by prompt; 24.5: the index page; 26.12: generation hashes; 26.13: size
# ----------------------------------------------------------------------------------------------
def test_other_seed_night_is_compared_by_prompt_and_faults_still_flag(tmp_path):
    """No shared assets (other seed): per-prompt means are compared, and the page says so. A clean
    night does not alarm; a toy-PSNR drop and half the assets failing still do."""
    base = make_run(str(tmp_path / "base"), seeds=(0,), noise_seed=1, images=False)
    clean = make_run(str(tmp_path / "clean"), seeds=(1,), noise_seed=2, day=1, images=False)
    code, s, page = _report(tmp_path, clean, baseline=base)
    assert code == 0 and s["pairing"]["rule"] == "prompt" and s["n_paired"] == 24
    assert s["metrics"]["toy_psnr"]["method"] == "paired_bootstrap_by_prompt" and s["metrics"]["toy_psnr"]["n"] == 24
    assert "paired by prompt" in page and "no shared assets" in page
    bad = make_run(str(tmp_path / "bad"), seeds=(1,), noise_seed=3, day=1, images=False, shift={"toy_psnr": -2.0})
    code, s, _ = _report(tmp_path, bad, baseline=base)
    assert code == 1 and s["regressed_metrics"] == ["toy_psnr"]
    half = make_run(str(tmp_path / "half"), seeds=(1,), noise_seed=4, day=1, images=False, fail=set(range(12)))
    code, s, _ = _report(tmp_path, half, baseline=base)
    assert code == 1 and "done_rate" in s["regressed_metrics"]
    # the same seeds pair by asset, as before
    same = make_run(str(tmp_path / "same"), seeds=(0,), noise_seed=5, day=1, images=False)
    _, s, _ = _report(tmp_path, same, baseline=base)
    assert s["pairing"]["rule"] == "asset" and s["metrics"]["toy_psnr"]["method"] == "paired_bootstrap"


def test_index_page_lists_every_night_and_links_their_reports(tmp_path):
    hist = tmp_path / "runs"
    nights = []
    for day in range(3):
        r = make_run(str(hist / f"2026-11-0{day + 1}"), n_prompts=6, day=day, noise_seed=day, images=False,
                     shift={"toy_psnr": -3.0} if day == 2 else None)
        out = os.path.join(r, "report", "report.html")
        code = build_report(r, out, history=str(hist), cfg=_cfg(n_boot=200))
        nights.append((r, out, code))
    assert [c for _, _, c in nights] == [0, 0, 1]
    index = (hist / "index.html").read_text(encoding="utf-8")
    rows = re.findall(r"<tr class=\"([a-z]*)\"><td class=\"l\">(.*?)</td><td class=\"l\"><b>(.*?)</b>", index)
    assert [r[2] for r in rows] == ["REGRESSION: toy_psnr", "ok", "no baseline"]     # newest first
    hrefs = re.findall(r'<a href="([^"]+)">', index)
    assert hrefs == [f"2026-11-0{d}/report/report.html" for d in (3, 2, 1)]
    assert all((hist / h).is_file() for h in hrefs)
    assert 'id="index-link"' in open(nights[-1][1], encoding="utf-8").read()
    assert "nightly report" in open(nights[-1][1], encoding="utf-8").read()
    # a report without --history is not called nightly
    _, _, page = _report(tmp_path, nights[0][0])
    assert "<h1>sctd3d report</h1>" in page and "nightly" not in page.split("<body>")[1][:200]


def test_nights_made_with_other_generation_settings_are_not_baselines(tmp_path, capsys):
    hist = tmp_path / "runs"
    make_run(str(hist / "n1"), n_prompts=8, day=0, noise_seed=1, images=False, gen_hash="aaaa")
    make_run(str(hist / "n2"), n_prompts=8, day=1, noise_seed=2, images=False, gen_hash="bbbb")
    run = make_run(str(hist / "n3"), n_prompts=8, day=2, noise_seed=3, images=False, gen_hash="aaaa",
                   shift={"toy_psnr": -3.0})
    code, s, page = _report(tmp_path, run, history=str(hist))
    assert s["baseline"]["uri"].endswith("n1") and code == 1     # n2 (other settings) skipped
    assert s["config_notes"] and "other generation settings" in s["config_notes"][0]
    assert "other generation settings" in page and "other generation settings" in capsys.readouterr().err
    # only nights with other settings: no baseline, said loudly, exit 0
    run4 = make_run(str(tmp_path / "solo" / "n4"), n_prompts=8, day=3, noise_seed=4, images=False, gen_hash="cccc")
    code, s, _ = _report(tmp_path, run4, history=str(hist))
    assert code == 0 and s["baseline"] is None and "no baseline" in s["config_notes"][0]
    # an explicit --baseline made with other settings is refused (exit 2), unless allowed
    with pytest.raises(ReportError, match="--allow-config-change"):
        _report(tmp_path, run, baseline=str(hist / "n2"))
    assert main([run, "--baseline", str(hist / "n2"), "--out", str(tmp_path / "x" / "r.html")]) == 2
    code, s, page = _report(tmp_path, run, baseline=str(hist / "n2"), allow_config_change=True)
    assert s["baseline"]["uri"].endswith("n2") and "--allow-config-change" in page
    code, s, _ = _report(tmp_path, run, history=str(hist), allow_config_change=True)
    assert s["baseline"]["uri"].endswith("n2")


def test_failure_tables_are_capped_and_the_rest_is_in_a_csv(tmp_path):
    import pandas as pd

    run = make_run(str(tmp_path / "run"), n_prompts=300, images=False, compact=True, fail=set(range(260)))
    code, s, page = _report(tmp_path, run, cfg=_cfg(max_failure_rows=25, table_max_rows=40))
    failures = re.search(r'<table id="failures">(.*?)</table>', page, re.S).group(1)
    assert failures.count("<tr>") == 1 + 25 and 'id="failures-more"' in page
    csv = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert len(csv) == 260 and set(csv["status"]) == {"failed"}
    assets = pd.read_csv(tmp_path / "out" / "assets.csv")
    assert len(assets) == 300 and assets["status"].iloc[0] == "failed"          # worst first
    rows_js = (tmp_path / "out" / "data" / "rows.js").read_text()
    data = json.loads(rows_js[rows_js.index("=") + 1:].rstrip().rstrip(";"))
    assert len(data["rows"]) == 40 and data["omitted"] == 260 and data["total"] == 300


@pytest.mark.parametrize("el,radius", [(15.0, 3.5), (-30.0, 2.0), (60.0, 7.25)])
def test_viewer_camera_is_the_render_stage_frame_0(el, radius):
    """The page's frame-0 camera (numpy, so the report needs no torch) equals the render stage's."""
    from kernels.cameras import orbit_cameras
    from stages.export.views import c2w_opengl
    from stages.report.assets import orbit_frame0_c2w

    cams = orbit_cameras(n=4, elevation_deg=el, radius=radius, fovy=0.6, width=16, height=16)
    assert np.allclose(orbit_frame0_c2w(el, radius), c2w_opengl(cams.viewmats)[0], atol=1e-6)


def test_report_joins_refuse_what_storage_refuses(tmp_path):
    """The report joins paths with common.storage.join_uri (one home): a part with '..', an
    absolute path, a scheme, NUL or a backslash is refused, and a loose manifest whose asset URIs
    climb out of its folder ('../run/assets/...') gets placeholders, not the files out there."""
    import pyarrow.parquet as pq

    from common import manifest
    from common.storage import StorageError, join_uri as storage_join
    from stages.report import assets as rassets, build as rbuild, data as rdata, index as rindex

    for mod in (rdata, rassets, rindex, rbuild):
        assert mod.join_uri("/r", "a", "b/c") == storage_join("/r", "a", "b/c") == "/r/a/b/c"
        for bad in ["..", "../x", "a/../../etc/passwd", "/etc/passwd", "C:/x", "a\\b", "s3://o/x", "a\x00b"]:
            with pytest.raises(StorageError):
                storage_join("/r", bad)
            with pytest.raises(StorageError):
                mod.join_uri("/r", bad)
    assert rdata.resolve_ref("../run/assets/x/asset.ply", str(tmp_path / "loose")) is None
    assert rdata.resolve_ref("assets/x/asset.ply", "s3://b/run") == "s3://b/run/assets/x/asset.ply"

    run = make_run(str(tmp_path / "run"), n_prompts=2, noise_seed=2)
    rows = manifest.read(run).to_pylist()
    prefix = run.rstrip("/") + "/"
    inside, outside = [dict(r) for r in rows], [dict(r) for r in rows]
    for a, b in zip(inside, outside):
        for c in ("asset_uri", "frames_uri"):
            a[c] = a[c][len(prefix):]                     # relative, under the loose file's folder
            b[c] = "../run/" + a[c]                       # relative, climbing out of it
    pq.write_table(manifest.to_table(inside), str(tmp_path / "run" / "rows.parquet"))
    (tmp_path / "loose").mkdir()
    pq.write_table(manifest.to_table(outside), str(tmp_path / "loose" / "rows.parquet"))
    _, _, page = _report(tmp_path, str(tmp_path / "run" / "rows.parquet"), cfg=_cfg(top_movers=2))
    assert len(re.findall(r'class="thumb"', page)) == 2   # the control: refs inside are followed
    _, _, page = _report(tmp_path, str(tmp_path / "loose" / "rows.parquet"), cfg=_cfg(top_movers=2))
    assert 'class="thumb"' not in page and page.count('class="placeholder"') == 2
