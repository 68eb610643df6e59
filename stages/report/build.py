"""`sctd3d report`: one self-contained HTML page + summary.json + an exit code for nightly alerts.

Inputs are manifests (a run directory, its `manifest/` directory, or a `.parquet` file, on any
fsspec URI). The regression decision (stages/regression.py) pairs the run with a baseline on
assets both share (key: prompt, seed, method) so prompt difficulty cancels out. With `--history`
and no `--baseline`, the newest earlier run of the history is the baseline, so a nightly job
needs only `--history runs/`.

Exit codes: 0 no metric regressed, 1 at least one regressed (summary.json says which).
Bad inputs raise `ReportError` (the CLI prints it and exits 2).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import posixpath
import sys
from typing import Any

import numpy as np
import pandas as pd

from stages import regression
from stages.report import html as report_html
from stages.report.compare import (_check_thresholds, _report_cfg, compare, lowest_scoring, spreads,
                                   top_movers, trend_table)
from stages.report.data import ReportError, _fs, _protocol, _read_json, join_uri, load_history, load_run
from common.storage import atomic_path

log = logging.getLogger(__name__)

SUMMARY_SCHEMA_VERSION = 1

# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def _write_bytes(uri: str, data: bytes) -> None:
    """Atomic on local disk (temp file + rename); object stores commit on close."""
    fs, path = _fs(uri)
    if _protocol(fs) in ("file", "local"):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # 0666 & ~umask: reports are shared
            fh.write(data)
        return
    with fs.open(path, "wb") as fh:
        fh.write(data)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, (pd.Timestamp, _dt.datetime)):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def build_report(manifest_uri: str, out: str, baseline: str | None = None,
                 history: str | None = None, cfg: Any = None) -> int:
    """Write `out` (HTML) and summary.json beside it; return 1 when a metric regressed, else 0."""
    rcfg = _report_cfg(cfg)
    _check_thresholds(rcfg)
    if not str(out).endswith((".html", ".htm")):
        raise ReportError(f"--out {out!r}: expected an .html path (summary.json is written beside it)")
    run = load_run(manifest_uri)
    past = load_history(history, exclude_root=run.root) if history else []
    if run.time is not None:
        past = [r for r in past if r.time is None or r.time <= run.time]
    base = load_run(baseline) if baseline else (past[-1] if past else None)

    decisions: list[regression.MetricDecision] = []
    pairs = None
    if base is not None:
        decisions, pairs = compare(run, base, rcfg)
        movers = top_movers(pairs, run.metrics(), rcfg.top_movers)
    else:
        movers = lowest_scoring(run, rcfg.top_movers)
    regressed = [d.metric for d in decisions if d.regressed]
    trend = trend_table(past + [run]) if past else []

    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "run": run.summary(),
        "baseline": None if base is None else base.summary(),
        "regressed": bool(regressed),
        "regressed_metrics": regressed,
        "n_paired": 0 if pairs is None else int(len(pairs)),
        "metrics": {d.metric: d.to_json() for d in decisions},
        "decision": {"rule": rcfg.rule, "n_boot": rcfg.n_boot, "confidence": rcfg.confidence,
                     "seed": rcfg.seed, "min_pairs": rcfg.min_pairs,
                     "thresholds": _check_thresholds(rcfg),
                     # measured run-to-run spread each threshold was set from (display only)
                     "spreads": spreads(rcfg), "spread_source": rcfg.spread_source},
        "trend": trend,
        "report_html": posixpath.basename(str(out)),
    }
    page = report_html.render_page(run=run, base=base, past=past, decisions=decisions,
                                   pairs=pairs, movers=movers, summary=summary, rcfg=rcfg)
    _write_bytes(out, page.encode("utf-8"))
    out_dir = posixpath.dirname(out) if "://" in out else os.path.dirname(os.path.abspath(out))
    summary_uri = join_uri(out_dir, "summary.json")
    _write_bytes(summary_uri, json.dumps(_clean(summary), indent=2, default=_json_default).encode())
    log.info("report: %s, %s (%s)", out, summary_uri,
             "REGRESSED: " + ", ".join(regressed) if regressed else "no regression")
    return 1 if regressed else 0


# ----------------------------------------------------------------------------------------------
# CLI (pipeline/cli.py delegates `sctd3d report ...` here)
# ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest_uri", help="run directory, its manifest/ dir, or a .parquet file (any fsspec URI)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--baseline", help="manifest to compare against (same forms as MANIFEST_URI)")
    g.add_argument("--history", help="directory of earlier runs/manifests: trend plots; the newest "
                                     "earlier run is the baseline")
    p.add_argument("--out", required=True, help="report .html path/URI; summary.json goes beside it")
    p.add_argument("--config", default=None, help="config YAML whose `report` section to use")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="override, e.g. --set report.n_boot=5000")


def run_cli(args: argparse.Namespace) -> int:
    from common.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, args.overrides)
        code = build_report(args.manifest_uri, args.out, baseline=args.baseline,
                            history=args.history, cfg=cfg)
    except (ReportError, ConfigError) as e:
        print(f"sctd3d report: error: {e}", file=sys.stderr)
        return 2
    out_dir = posixpath.dirname(args.out) if "://" in args.out else os.path.dirname(os.path.abspath(args.out))
    written = _read_json(join_uri(out_dir, "summary.json")) or {}
    if args.history and written.get("baseline") is None:
        print(f"wrote {args.out} (no baseline yet: no earlier run under {args.history})")
    else:
        print(f"wrote {args.out} ({'REGRESSION' if code else 'no regression'})")
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sctd3d report", description=__doc__.splitlines()[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
