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
from stages.report import assets as report_assets
from stages.report import html as report_html
from stages.report import index as report_index
from stages.report.compare import (PAIRING, _check_thresholds, _report_cfg, compare, lowest_scoring, spreads,
                                   top_movers, trend_table)
from stages.report.data import (KEY, ReportError, RunData, _fs, _protocol, _read_json, load_history,
                                load_run)
from common.storage import atomic_path, join_uri

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


def generation_hashes(run: RunData) -> set[str]:
    """The generation hashes of a night's assets (empty for v1 manifests that lack the column)."""
    if "generation_hash" not in run.df.columns:
        return set()
    return {str(h) for h in run.df["generation_hash"].dropna().unique() if str(h)}


def config_differs(a: RunData, b: RunData) -> bool:
    """Two nights made with different generation settings (unknown on either side: not known to differ)."""
    ha, hb = generation_hashes(a), generation_hashes(b)
    return bool(ha and hb and ha != hb)


def _floors(rcfg) -> dict[str, float]:
    out = {}
    for k, v in rcfg.floors.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ReportError(f"report.floors.{k}: expected a number, got {v!r}")
        out[str(k)] = float(v)
    return out


def _choose_baseline(run: RunData, past: list[RunData], baseline: str | None, allow: bool,
                     notes: list[tuple[str, str]]) -> RunData | None:
    """--baseline as given, or the newest earlier night made with the same generation settings.
    Nights made with other settings are never a baseline without --allow-config-change; saying so."""
    short = lambda r: ", ".join(sorted(generation_hashes(r)))[:40] or "?"  # noqa: E731
    if baseline:
        base = load_run(baseline)
        if config_differs(run, base):
            if not allow:
                raise ReportError(
                    f"--baseline {baseline} was made with generation settings {short(base)}, this run with "
                    f"{short(run)}: its metrics are not comparable; give a baseline made with the same "
                    f"config, or --allow-config-change to compare anyway")
            notes.append(("warn", f"The baseline was made with other generation settings ({short(base)} vs "
                                  f"{short(run)}): compared only because of --allow-config-change."))
        return base
    if not past:
        return None
    other = [r for r in past if config_differs(run, r)]
    same = [r for r in past if not config_differs(run, r)]
    if other:
        msg = (f"{len(other)} earlier night(s) of the history were made with other generation settings "
               f"({'; '.join(r.label for r in other[-3:])}{' …' if len(other) > 3 else ''}; this run: "
               f"{short(run)}).")
        if allow:
            notes.append(("warn", msg + " --allow-config-change: the newest night is the baseline anyway."))
            return past[-1]
        notes.append(("warn", msg + " None of them is used as a baseline (--allow-config-change to compare "
                                    "anyway)" + ("; no earlier night with the same settings: no baseline."
                                                 if not same else ".")))
        log.warning("report: %s", notes[-1][1])
    return same[-1] if same else None


def _mover_views(w, run: RunData, base: RunData | None, movers: pd.DataFrame) -> tuple[dict, set]:
    """3D view specs per mover (tonight and, with a baseline, the baseline side by side)."""
    views, keys = {}, set()
    if movers is None or movers.empty:
        return views, keys
    for idx, row in movers.iterrows():
        sfx = "_run" if base is not None else ""
        adir = report_assets._asset_dir(row, run.root, sfx)
        if not adir:
            continue
        spec = []
        v = report_assets.wrap_splat(w, adir)
        if v:
            spec.append({**v, "label": "tonight" if base is not None else "this run", "role": "run"})
        if base is not None:
            bdir = report_assets._asset_dir(row, base.root, "_base")
            bv = report_assets.wrap_splat(w, bdir) if bdir else None
            if bv:
                spec.append({**bv, "label": "baseline", "role": "base"})
        if spec:
            views[idx if isinstance(idx, tuple) else None] = spec
            if isinstance(idx, tuple) and len(idx) == len(KEY):
                keys.add(idx)
    return views, keys


def build_report(manifest_uri: str, out: str, baseline: str | None = None,
                 history: str | None = None, cfg: Any = None, allow_config_change: bool | None = None,
                 index: str | None = None) -> int:
    """Write `out` (HTML), summary.json and the page's folder beside it (and, with `history`, the
    index page over the nights); return 1 when a metric regressed, else 0."""
    rcfg = _report_cfg(cfg)
    _check_thresholds(rcfg)
    floors = _floors(rcfg)
    allow = rcfg.allow_config_change if allow_config_change is None else bool(allow_config_change)
    if not str(out).endswith((".html", ".htm")):
        raise ReportError(f"--out {out!r}: expected an .html path (summary.json is written beside it)")
    run = load_run(manifest_uri)
    past = load_history(history, exclude_root=run.root) if history else []
    if run.time is not None:
        past = [r for r in past if r.time is None or r.time <= run.time]
    notes: list[tuple[str, str]] = []
    base = _choose_baseline(run, past, baseline, allow, notes)

    decisions: list[regression.MetricDecision] = []
    pairs = None
    if base is not None:
        decisions, pairs = compare(run, base, rcfg)
        movers = top_movers(pairs, run.metrics(), rcfg.top_movers)
    else:
        movers = lowest_scoring(run, rcfg.top_movers)
    regressed = [d.metric for d in decisions if d.regressed]
    trend = trend_table(past + [run]) if past else []
    pairing = None if pairs is None else pairs.attrs.get("pairing", "asset")

    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "run": run.summary(),
        "baseline": None if base is None else base.summary(),
        "regressed": bool(regressed),
        "regressed_metrics": regressed,
        "n_paired": 0 if pairs is None else int(len(pairs)),
        "pairing": None if pairing is None else {"rule": pairing, "text": PAIRING[pairing]},
        "config_notes": [t for _, t in notes],
        "metrics": {d.metric: d.to_json() for d in decisions},
        "decision": {"rule": rcfg.rule, "n_boot": rcfg.n_boot, "confidence": rcfg.confidence,
                     "seed": rcfg.seed, "min_pairs": rcfg.min_pairs,
                     "thresholds": _check_thresholds(rcfg),
                     # measured run-to-run spread each threshold was set from (display only)
                     "spreads": spreads(rcfg), "spread_source": rcfg.spread_source},
        "trend": trend,
        "report_html": posixpath.basename(str(out)),
    }
    out_dir = posixpath.dirname(out) if "://" in out else os.path.dirname(os.path.abspath(out))
    w = report_assets.FolderWriter(out_dir, _write_bytes)
    viewer_js = report_assets.copy_static(w)
    views, side_by_side = _mover_views(w, run, base, movers) if viewer_js else ({}, set())
    rows = report_assets.build_rows(run, base, pairing, rcfg, out_dir, w, floors,
                                    side_by_side if viewer_js else set())
    if not viewer_js:
        for r in rows["rows"]:
            r[-1].pop("views", None)
            if r[-1].get("no_view") is None and "record" in r[-1]:
                r[-1]["no_view"] = "no 3D viewer bundle in this report (tools/report-viewer/setup.sh)"
    w.write(report_assets.ROWS_JS, report_assets.js_assign("SCTD3D_ROWS", rows).encode("utf-8"))
    bad = run.df[run.df["status"].astype(str) != "done"]
    fcols = [c for c in ("status", "prompt", "seed", "method", "attempts", "asset_id", "input_line", "error")
             if c in bad.columns]
    w.write("failures.csv", bad[fcols].to_csv(index=False).encode("utf-8"))
    summary["page"] = {"asset_rows": rows["total"], "asset_rows_in_page": len(rows["rows"]),
                       "viewers": rows["n_views"] + sum(len(v) for v in views.values()),
                       "viewer_js": bool(viewer_js)}
    page_cfg = {"camera": report_assets.page_camera(run), "rows_js": report_assets.ROWS_JS,
                "viewer_js": viewer_js}
    index_uri = index or (report_index.default_index_uri(history) if history else None)
    index_href = report_assets.link(index_uri, out_dir) if index_uri else None
    page = report_html.render_page(run=run, base=base, past=past, decisions=decisions,
                                   pairs=pairs, movers=movers, summary=summary, rcfg=rcfg,
                                   page=page_cfg, views=views, nightly=bool(history), notes=notes,
                                   index_href=index_href)
    _write_bytes(out, page.encode("utf-8"))
    summary_uri = join_uri(out_dir, "summary.json")
    _write_bytes(summary_uri, json.dumps(_clean(summary), indent=2, default=_json_default).encode())
    if index_uri:
        nights = past + [run]
        _write_bytes(index_uri, report_index.build_index(
            nights, run, summary, out, index_uri, report_index.index_metrics(nights)).encode("utf-8"))
    for _, t in notes:
        print(f"sctd3d report: warning: {t}", file=sys.stderr)
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
    p.add_argument("--allow-config-change", action="store_true", default=None,
                   help="compare with a night made with other generation settings (by default such a "
                        "night is never the baseline, and --baseline to one is refused)")
    p.add_argument("--index", default=None,
                   help="where to write the page over all nights (default with --history: HISTORY/index.html)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="override, e.g. --set report.n_boot=5000")


def run_cli(args: argparse.Namespace) -> int:
    from common.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, args.overrides)
        code = build_report(args.manifest_uri, args.out, baseline=args.baseline,
                            history=args.history, cfg=cfg,
                            allow_config_change=getattr(args, "allow_config_change", None),
                            index=getattr(args, "index", None))
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
