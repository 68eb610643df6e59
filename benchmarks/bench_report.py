"""The report at scale: build time, page and folder size, peak RSS, and Chromium load time.

Each size: one child process writes two synthetic nights of N
assets (compact manifests, 20 % of prompts failed, no renders), another runs `build_report RUN
--baseline BASE` alone (its peak RSS is the report's).
Then headless Chromium opens the page from file:// and times navigation -> the per-asset table
drawn (report.js sets SCTD3D.tableReady), and one sort by a metric column.

Usage: .venv/bin/python benchmarks/bench_report.py [--sizes 1000 10000 100000] [--browser 1000 10000]
Results: benchmarks/RESULTS.md, "Report at scale".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _folder_mb(d: str) -> float:
    return sum(os.path.getsize(os.path.join(a, f)) for a, _, fs in os.walk(d) for f in fs) / 1e6


def fixtures(n: int, work: str) -> None:
    from report_fixtures import make_run  # noqa: E402

    fail = set(range(0, n, 5))  # 20 % of the prompts fail
    make_run(os.path.join(work, "base"), n_prompts=n, noise_seed=1, images=False, compact=True, fail=fail)
    make_run(os.path.join(work, "run"), n_prompts=n, noise_seed=2, day=1, images=False, compact=True,
             fail=fail, shift={"clip_l": -1.0})


def child(n: int, work: str) -> dict:
    """The report alone in this process (fixtures were made by another), so its peak RSS is the report's."""
    from common.config import ReportConfig
    from stages.report import build_report

    base, run = os.path.join(work, "base"), os.path.join(work, "run")
    t1 = time.perf_counter()
    out = os.path.join(work, "out", "report.html")
    code = build_report(run, out, baseline=base, cfg=ReportConfig())
    t2 = time.perf_counter()
    odir = os.path.dirname(out)
    return {"assets": n, "exit": code, "build_s": t2 - t1,
            "page_mb": os.path.getsize(out) / 1e6, "rows_js_mb": os.path.getsize(os.path.join(odir, "data", "rows.js")) / 1e6,
            "folder_mb": _folder_mb(odir), "page": out,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(n: int, work: str) -> dict:
    subprocess.run([sys.executable, __file__, "--fixtures", str(n), "--work", work], check=True,
                   env=dict(os.environ, PYTHONPATH=ROOT))
    p = subprocess.run([sys.executable, __file__, "--child", str(n), "--work", work], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    if p.returncode != 0:
        raise SystemExit(f"child for {n} assets failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def browser_load(page: str, repeats: int = 3) -> dict:
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for f in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
              "--enable-unsafe-swiftshader"):
        opts.add_argument(f)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        loads, sorts = [], []
        for _ in range(repeats):
            drv.get("about:blank")
            t0 = time.perf_counter()
            drv.get("file://" + page)
            WebDriverWait(drv, 300, poll_frequency=0.05).until(lambda d: d.execute_script(
                "return window.SCTD3D && window.SCTD3D.tableReady"))
            loads.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            drv.execute_script("document.querySelector('#asset-table th[data-key=clip_l]').click()")
            drv.execute_script("return document.querySelectorAll('#asset-table tbody tr').length")
            sorts.append(time.perf_counter() - t1)
        return {"load_s_median": sorted(loads)[len(loads) // 2], "sort_s_median": sorted(sorts)[len(sorts) // 2]}
    finally:
        drv.quit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--browser", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--fixtures", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--work", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.fixtures:
        fixtures(a.fixtures, a.work)
        return 0
    if a.child:
        print(json.dumps(child(a.child, a.work)))
        return 0
    print("| assets | build (s) | page (MB) | data/rows.js (MB) | folder (MB) | peak RSS (MB) | Chromium load (s) | sort (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in a.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(n, tmp)
            b = browser_load(r["page"]) if n in a.browser else {}
            print(f"| {n} | {r['build_s']:.1f} | {r['page_mb']:.2f} | {r['rows_js_mb']:.2f} | {r['folder_mb']:.1f} | "
                  f"{r['peak_rss_mb']:.0f} | {b.get('load_s_median', float('nan')):.2f} | "
                  f"{b.get('sort_s_median', float('nan')):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
