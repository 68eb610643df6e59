"""Time `build_report` on synthetic nightly manifests (one part file per asset, like a live run).

Usage: .venv/bin/python benchmarks/bench_report.py [N_ASSETS ...]   (prints seconds per stage)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from report_fixtures import make_run  # noqa: E402

from common.config import ReportConfig  # noqa: E402
from stages.report import build_report, load_run  # noqa: E402


def main(sizes: list[int]) -> None:
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            base = make_run(os.path.join(tmp, "base"), n_prompts=n, noise_seed=1)
            run = make_run(os.path.join(tmp, "run"), n_prompts=n, noise_seed=2, day=1, shift={"clip_l": -1.0})
            t0 = time.perf_counter()
            load_run(run)
            t1 = time.perf_counter()
            build_report(run, os.path.join(tmp, "out", "report.html"), baseline=base, cfg=ReportConfig())
            t2 = time.perf_counter()
            size = os.path.getsize(os.path.join(tmp, "out", "report.html")) / 1e6
            print(f"assets={n:5d}  read manifest ({n} parts) {t1 - t0:6.2f} s  "
                  f"full report (2 runs, n_boot=2000) {t2 - t1:6.2f} s  html {size:.2f} MB")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000])
