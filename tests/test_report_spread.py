"""The report page shows, next to each decision, its threshold and the measured run-to-run spread."""

from __future__ import annotations

import json
import re

import pytest

from common.config import ConfigError, ReportConfig, load_config
from report_fixtures import make_run
from stages.report import ReportError, build_report


def _row(page: str, metric: str) -> list[str]:
    table = re.search(r'<table id="regression-table">(.*?)</table>', page, re.S).group(1)
    header = re.findall(r"<th[^>]*>(.*?)</th>", table)
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)
        if cells and cells[0] == metric:
            return dict(zip(header, cells))
    raise AssertionError(f"no row for {metric} in the regression table")


def test_threshold_and_spread_beside_each_decision(tmp_path):
    base = make_run(str(tmp_path / "base"), noise_seed=1, images=False)
    run = make_run(str(tmp_path / "run"), noise_seed=2, day=1, shift={"toy_rprec": -0.2}, images=False)
    cfg = ReportConfig(n_boot=200, spreads={"toy_psnr": 0.25, "toy_rprec": 0.04},
                       spread_source="nightly_power, 4 seeds")
    out = tmp_path / "out" / "report.html"
    assert build_report(run, str(out), baseline=base, cfg=cfg) == 1
    page = out.read_text(encoding="utf-8")
    psnr, rprec, clip = _row(page, "toy_psnr"), _row(page, "toy_rprec"), _row(page, "clip_l")
    assert psnr["threshold"] == "0.500" and psnr["run-to-run spread"] == "± 0.250"
    assert rprec["threshold"] == "0.050" and rprec["run-to-run spread"] == "± 0.040"
    assert "regressed" in rprec["status"]
    assert clip["run-to-run spread"] == "not measured"
    assert "nightly_power, 4 seeds" in page
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["decision"]["spreads"] == {"toy_psnr": 0.25, "toy_rprec": 0.04}
    assert summary["decision"]["spread_source"] == "nightly_power, 4 seeds"


def test_bad_spread_is_refused(tmp_path):
    run = make_run(str(tmp_path / "run"), noise_seed=2, images=False)
    with pytest.raises(ReportError, match="report.spreads.toy_psnr"):
        build_report(run, str(tmp_path / "r.html"), cfg=ReportConfig(spreads={"toy_psnr": -1.0}))
    with pytest.raises(ConfigError, match="report.spreads.toy_psnr"):
        load_config("nightly_toy.yaml", ["report.spreads={toy_psnr: -0.1}"])


def test_nightly_config_ships_measured_spreads():
    """Every gated per-asset metric of the nightly has the spread its threshold was set from."""
    rc = load_config("nightly_toy.yaml").report
    for m in ("toy_psnr", "toy_rprec"):
        assert m in rc.spreads and rc.spreads[m] >= 0, m
    assert rc.spread_source
