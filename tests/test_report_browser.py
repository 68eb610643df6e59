"""The report opens in headless Chromium: plots and thumbnails render, the per-asset table sorts
and filters, the 3D viewer draws the asset as the render stage does, side-by-side viewers load,
and nothing is requested from outside the report's folder, both from file:// and from a web server
on 127.0.0.1.

Chromium and chromedriver come from Debian (scripts/install_test_deps.sh installs them; this
test runs it when they are missing). The test skips only when they cannot be installed. WebGL runs
on SwiftShader (software), so the viewer tests need no GPU; they skip, saying why, when the viewer
bundle is not built (tools/report-viewer/setup.sh, run by `make setup`).
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
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--disable-background-networking",
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
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every network request, file:// too
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


# ----------------------------------------------------------------------------------------------
# The interactive page: table, 3D viewers, requests (issue 24 items 3-4)
# ----------------------------------------------------------------------------------------------
# The viewer's frame-0 picture against the render stage's frames/000.png: PSNR >= 30 dB (measured
# ~40 dB: Spark and the project's rasteriser differ only in antialiasing and 8-bit blending). The
# negative control (the viewer's picture against frame 2, the other side of the turntable) must
# stay below it, so the metric can fail.
VIEWER_PSNR_DB = 30.0
XSS_PROMPT = 'toy object 01 </script><img src=x onerror="window.__xss=1">'


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def splat_site(tmp_path_factory):
    from report_fixtures import make_splat_run
    from stages.report.assets import viewer_dist

    if viewer_dist() is None:
        pytest.skip("the report's viewer bundle is not built: run tools/report-viewer/setup.sh (make setup)")
    root = tmp_path_factory.mktemp("splat-site")
    hist = root / "runs"
    make_splat_run(str(hist / "n1"), noise_seed=1, prompt_fmt="toy object {p:02d}")
    run = make_splat_run(str(hist / "n2"), day=1, scene_seed=7, noise_seed=2, shift={"toy_psnr": -3.0})
    out = hist / "n2" / "report" / "report.html"
    code = build_report(str(run), str(out), history=str(hist), cfg=ReportConfig(n_boot=200, top_movers=2))
    assert code == 1
    return root, out


@pytest.fixture(scope="module")
def http_root(splat_site):
    """A web server on 127.0.0.1 over the folder holding the runs (so a request that leaves the
    report's folder would be answered, and is recorded)."""
    import functools
    import http.server
    import threading

    root, _ = splat_site
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            seen.append(self.path)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


def _page_url(mode: str, splat_site, http_root) -> tuple[str, str]:
    root, out = splat_site
    if mode == "file":
        return out.as_uri(), out.parent.as_uri() + "/"
    base = http_root[0] + "/" + out.relative_to(root).as_posix()
    return base, base.rsplit("/", 1)[0] + "/"


def _wait(drv, script: str, what: str, timeout: float = 90.0):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))
    except Exception as e:  # noqa: BLE001 - say what did not happen, with the page's errors
        errs = drv.execute_script("return (window.SCTD3D || {}).errors")
        raise AssertionError(f"timed out waiting for {what}; page errors: {errs}") from e


def _open(drv, url: str) -> None:
    drv.set_window_size(1400, 1000)
    drv.get(url)
    _wait(drv, "return window.SCTD3D && window.SCTD3D.tableReady", "the per-asset table")


def _settle(drv, gid: int, angle: float, selectors: list[str], timeout: float = 90.0) -> list[np.ndarray]:
    """Stop group `gid` at `angle`; the canvases' pictures once they are drawn and stable (Spark
    sorts splats in a worker, so the first frames at a new angle may lag; events, not sleeps)."""
    import time as _time

    drv.execute_script("window.SCTD3D.setAngle(arguments[0], arguments[1])", gid, angle)
    t0, prev = _time.monotonic(), None
    while True:
        n = drv.execute_script("return window.SCTD3D.groups[arguments[0]].frames", gid)
        _wait(drv, f"return window.SCTD3D.groups[{gid}].frames > {n} + 4", "the viewers to draw")
        pics = [_canvas_rgb(drv, sel) for sel in selectors]
        if prev is not None and all(p.std() > 10 for p in pics) and all(np.array_equal(a, b) for a, b in zip(pics, prev)):
            return pics
        if _time.monotonic() - t0 > timeout:
            raise AssertionError(f"viewers not drawn/stable after {timeout} s: stds {[float(p.std()) for p in pics]}")
        prev = pics


def _requests(drv) -> list[str]:
    """URLs the browser requested since the last call (DevTools Network events; file:// included)."""
    import json as _json

    urls = []
    for e in drv.get_log("performance"):
        msg = _json.loads(e["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _canvas_rgb(drv, css: str) -> np.ndarray:
    import base64 as b64

    data = drv.execute_script(f"return document.querySelector({css!r}).toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(b64.b64decode(data.split(",", 1)[1]))).convert("RGB"))


def _frame(run_root: Path, asset_uri: str, i: int) -> np.ndarray:
    d = (run_root / asset_uri).parent / "frames"
    return np.asarray(Image.open(sorted(d.glob("*.png"))[i]).convert("RGB"))


@pytest.mark.parametrize("mode", ["file", "http"])
def test_viewer_draws_frame_0_like_the_render_stage(browser, splat_site, http_root, mode):
    from stages.report import read_manifest

    url, _ = _page_url(mode, splat_site, http_root)
    _open(browser, url)
    root, df = read_manifest(str(splat_site[0] / "runs" / "n2"))
    row = df[df["prompt"] == "toy object 01"].iloc[0]
    # filter to the asset, open its row, open its 3D view
    box = browser.find_element("id", "asset-filter")
    box.clear()
    box.send_keys("toy object 01")
    rows = browser.find_elements("css selector", "#asset-table tbody tr.arow")
    assert len(rows) == 1
    rows[0].click()
    browser.find_element("css selector", "#asset-table tr.detail button.open3d").click()
    _wait(browser, "return document.querySelector('#asset-table tr.detail canvas.viewer[data-ready]') !== null",
          "the viewer to load the asset")
    gid = browser.execute_script("return window.SCTD3D.groups.length - 1")
    (shot,) = _settle(browser, gid, 0.0, ["#asset-table tr.detail canvas.viewer"])
    f0, f2 = _frame(Path(root), row["asset_uri"], 0), _frame(Path(root), row["asset_uri"], 2)
    assert shot.shape == f0.shape and shot.std() > 10, "the viewer drew nothing"
    p0, p2 = _psnr(shot, f0), _psnr(shot, f2)
    assert p0 >= VIEWER_PSNR_DB, f"viewer vs frame 0: {p0:.1f} dB < {VIEWER_PSNR_DB}"
    assert p2 < VIEWER_PSNR_DB, f"control (frame 2, other side) should differ: {p2:.1f} dB"
    # the training curve from meta.json is drawn
    curve = _canvas_rgb(browser, "#asset-table tr.detail canvas.curve")
    assert curve.std() > 5
    # the turntable plays from the report folder; links point at the asset's files
    vid = browser.find_element("css selector", "#asset-table tr.detail video").get_attribute("src")
    assert vid.startswith(_page_url(mode, splat_site, http_root)[1] + "a/") and vid.endswith(".mp4")
    links = {a.text: a.get_attribute("href") for a in browser.find_elements("css selector", "#asset-table tr.detail .links a")}
    rel = Path(row["asset_uri"]).relative_to(root).as_posix()
    assert links[".ply"].endswith("/runs/n2/" + rel) and links["meta.json"].endswith("meta.json") and "run.json" in links


@pytest.mark.parametrize("mode", ["file", "http"])
def test_side_by_side_viewers_load_and_no_request_leaves_the_folder(browser, splat_site, http_root, mode):
    url, folder = _page_url(mode, splat_site, http_root)
    if mode == "http":
        http_root[1].clear()
    _requests(browser)
    _open(browser, url)
    browser.find_element("id", "open3d-0").click()
    _wait(browser, "return document.querySelectorAll('#v3d-0 canvas.viewer[data-ready]').length === 2",
          "tonight and the baseline to load side by side")
    roles = browser.execute_script(
        "return Array.from(document.querySelectorAll('#v3d-0 canvas.viewer')).map(c => c.dataset.role)")
    assert roles == ["run", "base"]
    # both orbit with one angle: set it, and both differ from their own picture at another angle
    gid = browser.execute_script("return window.SCTD3D.groups.length - 1")
    pics = []
    for a in (0.0, 1.5):
        pics.append(_settle(browser, gid, a, [f"#v3d-0 canvas.viewer[data-role={r}]" for r in ("run", "base")]))
    for k in range(2):
        assert pics[0][k].std() > 10 and np.abs(pics[0][k].astype(int) - pics[1][k]).mean() > 2
    assert np.abs(pics[0][0].astype(int) - pics[0][1]).mean() > 2, "tonight and baseline are different assets"
    names = _requests(browser)
    assert any("/a/" in n for n in names) and any(n.endswith("viewer/viewer.js") for n in names), names
    outside = [n for n in names if not n.startswith((folder, "data:", "blob:"))]
    assert not outside, f"requests outside the report folder {folder}: {outside}"
    if mode == "http":
        prefix = "/" + Path(splat_site[1]).parent.relative_to(splat_site[0]).as_posix() + "/"
        assert http_root[1] and all(p.startswith(prefix) for p in http_root[1]), http_root[1]


def test_sorting_and_filtering_reorder_rows(browser, splat_site, http_root):
    _open(browser, _page_url("file", splat_site, http_root)[0])

    def column(key):
        i = browser.execute_script(
            "return Array.from(document.querySelectorAll('#asset-table thead th')).findIndex(t => t.dataset.key === arguments[0])", key)
        return [td.text for td in browser.find_elements("css selector", f"#asset-table tbody tr.arow td:nth-child({i + 1})")]

    first = column("prompt")
    head = browser.find_element("css selector", "#asset-table th[data-key=toy_psnr]")
    head.click()
    asc = [float(x) for x in column("toy_psnr")]
    assert asc == sorted(asc)
    head.click()
    desc = [float(x) for x in column("toy_psnr")]
    assert desc == sorted(desc, reverse=True) and desc != asc
    browser.find_element("css selector", "#asset-table th[data-key=prompt]").click()
    assert column("prompt") == sorted(first)
    box = browser.find_element("id", "asset-filter")
    box.send_keys("object 02")
    assert column("prompt") == ["toy object 02"]


def test_prompts_are_escaped_in_the_table(browser, tmp_path):
    run = make_run(str(tmp_path / "run"), n_prompts=3, prompt_fmt="{p:02d} " + XSS_PROMPT, images=False,
                   shift={"toy_rprec": -1.0})
    out = tmp_path / "site" / "report.html"
    build_report(run, str(out), cfg=ReportConfig(n_boot=50))
    assert "<img src=x" not in out.read_text(encoding="utf-8")
    _open(browser, out.as_uri())
    cells = [td.text for td in browser.find_elements("css selector", "#asset-table tbody tr.arow td:nth-child(1)")]
    assert cells and all(XSS_PROMPT in c for c in cells)
    assert browser.execute_script("return window.__xss") is None
    assert not browser.find_elements("css selector", "#asset-table img")
    # values at or below the per-asset floor (report.floors: toy_rprec 0) are highlighted
    assert len(browser.find_elements("css selector", "#asset-table td.floor")) == 3
