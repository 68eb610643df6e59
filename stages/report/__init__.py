"""`sctd3d report`: the run report as a package by concept.

- `data`: reading runs (manifest via common.manifest, run.json, FID, history)
- `compare`: paired differences, thresholds and spreads, movers, trends
- `html`: the self-contained page
- `build`: summary.json + report.html + the exit code, and the CLI
"""

from stages.report.build import add_arguments, build_report, main, run_cli
from stages.report.data import ReportError, RunData, load_history, load_run, read_manifest

__all__ = ["ReportError", "RunData", "add_arguments", "build_report", "load_history", "load_run", "main",
           "read_manifest", "run_cli"]
