"""The report opens in headless Chromium and its plots and thumbnails actually render.

Chromium and chromedriver come from Debian (scripts/install_test_deps.sh installs them; this
test runs it when they are missing). The test skips only when they cannot be installed.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import ReportConfig
from report_fixtures import make_run
from stages.report import build_report

REPO = Path(__file__).resolve().parent.parent
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1")


def _binaries() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency: pip install -e '.[dev]'")
    chromium, driver_bin = _binaries()
    if not (chromium and driver_bin):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install_test_deps.sh")],
                              capture_output=True, text=True, timeout=900)
        chromium, driver_bin = _binaries()
        if not (chromium and driver_bin):
            pytest.skip("chromium/chromedriver not installed and scripts/install_test_deps.sh could not "
                        f"install them: {(proc.stdout + proc.stderr).strip()[-400:]}")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in CHROME_FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    drv = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


def _screenshot_regions(drv, url: str, selector: str) -> tuple[list[dict], Image.Image]:
    """Open url in a window tall enough for the whole page; return element rects and a screenshot."""
    drv.set_window_size(1280, 800)
    drv.get(url)
    height = int(drv.execute_script("return document.documentElement.scrollHeight"))
    drv.set_window_size(1280, min(height + 200, 16000))
    drv.execute_script("window.scrollTo(0, 0)")
    rects = drv.execute_script("""
        return Array.from(document.querySelectorAll(arguments[0])).map(e => {
            const r = e.getBoundingClientRect();
            return {id: e.id, tag: e.tagName, x: r.left, y: r.top, w: r.width, h: r.height,
                    complete: e.complete === undefined ? true : e.complete,
                    natural: e.naturalWidth === undefined ? -1 : e.naturalWidth};
        });""", selector)
    shot = Image.open(io.BytesIO(drv.get_screenshot_as_png())).convert("L")
    return rects, shot


def _region_std(shot: Image.Image, r: dict) -> float:
    box = (int(r["x"]) + 1, int(r["y"]) + 1, int(r["x"] + r["w"]) - 1, int(r["y"] + r["h"]) - 1)
    assert box[2] <= shot.width and box[3] <= shot.height, f"{r['id']} lies outside the screenshot {box}"
    return float(np.asarray(shot.crop(box), dtype=float).std())


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-report")
    hist = tmp / "runs"
    for day in range(3):
        make_run(str(hist / f"2026-11-0{day + 1}"), n_prompts=10, day=day, noise_seed=day)
    run = make_run(str(hist / "2026-11-04"), n_prompts=10, day=3, noise_seed=7, shift={"clip_l": -2.0}, fail={9})
    out = tmp / "site" / "report.html"
    code = build_report(str(run), str(out), history=str(hist), cfg=ReportConfig(n_boot=300, top_movers=3))
    assert code == 1
    return out


def test_report_renders_in_chromium(browser, report_page):
    rects, shot = _screenshot_regions(browser, report_page.as_uri(), "img.plot, img.thumb")
    plots = [r for r in rects if r["id"].startswith("plot-")]
    thumbs = [r for r in rects if r["id"].startswith("thumb-")]
    assert {"plot-trend-clip_l", "plot-trend-toy_psnr", "plot-diff-clip_l"} <= {r["id"] for r in plots}
    assert len(thumbs) == 6                                    # 3 movers x (run, baseline)
    for r in rects:
        assert r["complete"] and r["natural"] > 0, f"{r['id']} did not decode"
        assert r["w"] > 50 and r["h"] > 10, f"{r['id']} has no area: {r}"
        assert _region_std(shot, r) > 8.0, f"{r['id']} renders blank"
    assert browser.find_element("id", "verdict").text.startswith("REGRESSION in clip_l")
    # nothing was fetched from outside the page itself
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(n.startswith(("data:", "file:")) for n in names), names


def test_blank_image_is_detected(browser, report_page, tmp_path):
    """The non-blank check can fail: a page whose plot is a flat white PNG is caught."""
    import base64

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (255, 255, 255)).save(buf, format="PNG")
    blank = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    page = tmp_path / "blank.html"
    page.write_text(f'<html><body style="background:#fff"><img class="plot" id="plot-blank" src="{blank}">'
                    f"</body></html>", encoding="utf-8")
    rects, shot = _screenshot_regions(browser, page.as_uri(), "img.plot")
    assert len(rects) == 1 and rects[0]["natural"] == 300
    assert _region_std(shot, rects[0]) < 1.0
