"""HTML rendering for `sctd3d report`: plots as embedded PNGs, thumbnails, tables, inline CSS.

Plots and thumbnails are data: URIs in the page; the interactive parts (per-asset table, 3D
viewers) are classic scripts in the report folder (stages/report/assets.py), so the page opens from
local disk, a web server or object storage with no network. Every manifest string is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import posixpath
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stages.regression import MetricDecision
from stages.report.data import KEY, RunData, resolve_ref

log = logging.getLogger(__name__)

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2329;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde}
.muted{color:#667;font-size:13px} .mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #d8dde3;padding:3px 8px;text-align:right}
th{background:#f3f5f8} td.l,th.l{text-align:left} tr.regressed td{background:#fde2e1} tr.improved td{background:#e3f6e5}
tr.missing td{background:#fff1d6}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.banner.bad{background:#fde2e1;color:#8a1c13} .banner.good{background:#e3f6e5;color:#1d5e27} .banner.none{background:#eef1f5;color:#334}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots img{border:1px solid #e3e6ea;max-width:100%}
.sheet{display:flex;flex-wrap:wrap;gap:14px} .card{border:1px solid #d8dde3;border-radius:6px;padding:8px;max-width:100%}
.card img{image-rendering:pixelated;display:block;margin:2px 0;max-width:100%}
.placeholder{background:repeating-linear-gradient(45deg,#eceff3,#eceff3 8px,#f7f8fa 8px,#f7f8fa 16px);color:#778;
 display:flex;align-items:center;justify-content:center;height:60px;font-size:12px;border:1px dashed #bcc}
.scroll{max-height:520px;overflow:auto;border:1px solid #eee} details{font-size:12px}
.err{white-space:pre-wrap;max-width:720px;text-align:left}
.banner.warn{background:#fff1d6;color:#7a4a00}
.controls{display:flex;gap:8px;align-items:center;margin:6px 0;flex-wrap:wrap}
#asset-table th{cursor:pointer;user-select:none} #asset-table th.sorted{background:#dfe7f3}
#asset-table tr.arow{cursor:pointer} #asset-table tr.arow:hover td{background:#f5f8fc} #asset-table tr.bad td{background:#fdecec}
td.floor{background:#fde2e1 !important;font-weight:600} td.neg{color:#a61b1b} td.pos{color:#1d5e27}
tr.detail td{background:#fafbfc} .dwrap{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-start}
.vrow{display:flex;gap:10px} .vbox canvas{border:1px solid #d8dde3;width:256px;height:256px;touch-action:none}
.links a{font-size:12px} pre.mono{max-height:220px;overflow:auto;background:#f6f7f9;padding:6px}
"""


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return esc(x)
    if not math.isfinite(v):
        return "–"
    return f"{v:.{nd}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{nd}f}"


def fig_to_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(uri: str, elem_id: str, alt: str, cls: str = "plot", width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    return f'<img class="{cls}" id="{esc(elem_id)}" alt="{esc(alt)}" src="{uri}"{w}>'


def _table(header: list[str], rows: list[list[str]], row_cls: list[str] | None = None,
           left: int = 1, elem_id: str = "") -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(header))
    body = []
    for j, r in enumerate(rows):
        cls = f' class="{row_cls[j]}"' if row_cls and row_cls[j] else ""
        tds = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
        body.append(f"<tr{cls}>{tds}</tr>")
    i = f' id="{esc(elem_id)}"' if elem_id else ""
    return f"<table{i}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ----------------------------------------------------------------------------------------------
# Images of assets
# ----------------------------------------------------------------------------------------------
def _dir_of(ref: str) -> str:
    base = posixpath.basename(ref.rstrip("/"))
    return posixpath.dirname(ref.rstrip("/")) if "." in base else ref.rstrip("/")


def asset_image_candidates(row: pd.Series, root: str, suffix: str = "") -> list[str]:
    """Where a picture of the asset may be: sheet.png next to the asset, else its first frame."""
    cands: list[str] = []
    asset = resolve_ref(row.get(f"asset_uri{suffix}"), root)
    frames = resolve_ref(row.get(f"frames_uri{suffix}"), root)
    video = resolve_ref(row.get(f"video_uri{suffix}"), root)
    if asset:
        cands.append(posixpath.join(_dir_of(asset), "sheet.png"))
    if frames:
        f = frames.rstrip("/")
        cands.append(posixpath.join(posixpath.dirname(f), "sheet.png"))
        cands.append("frames:" + f)
    if video:
        cands.append(posixpath.join(posixpath.dirname(video), "sheet.png"))
    return list(dict.fromkeys(cands))


def _read_first_image(cands: list[str]) -> bytes | None:
    for c in cands:
        try:
            if c.startswith("frames:"):
                fs, p = fsspec.core.url_to_fs(c[len("frames:"):])
                if not fs.isdir(p):
                    continue
                imgs = sorted(x for x in fs.ls(p, detail=False) if str(x).lower().endswith(IMAGE_EXT))
                if not imgs:
                    continue
                with fs.open(imgs[0], "rb") as fh:
                    return fh.read()
            fs, p = fsspec.core.url_to_fs(c)
            if fs.exists(p):
                with fs.open(p, "rb") as fh:
                    return fh.read()
        except (OSError, ValueError) as e:
            log.warning("report: cannot read %s: %s", c, e)
    return None


def thumbnail_data_uri(data: bytes, max_w: int) -> str | None:
    """PNG data URI, at most max_w wide (small renders are kept small; CSS scales them up)."""
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError) as e:
        log.warning("report: not an image (%s); showing a placeholder", e)
        return None
    im = im.convert("RGB")
    if im.width > max_w:
        im = im.resize((max_w, max(1, round(im.height * max_w / im.width))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def asset_figure(row: pd.Series, root: str, suffix: str, thumb_px: int, elem_id: str, caption: str) -> str:
    data = _read_first_image(asset_image_candidates(row, root, suffix))
    uri = thumbnail_data_uri(data, thumb_px) if data else None
    if uri is None:
        return (f'<div class="muted">{esc(caption)}</div>'
                f'<div class="placeholder" id="{esc(elem_id)}">no render available</div>')
    return (f'<div class="muted">{esc(caption)}</div>'
            + img_tag(uri, elem_id, caption, cls="thumb", width=thumb_px))


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------
def trend_plot(trend: list[dict], metric: str) -> str | None:
    """Mean +/- s.e.m. per method across runs (oldest left); the current run is the last point."""
    x = np.arange(len(trend))
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot(111)
    drawn = False
    if metric in ("done_rate", "gpu_hours", "fid"):
        y = np.array([np.nan if t.get(metric) is None else t[metric] for t in trend], dtype=float)
        if np.isfinite(y).any() and not (metric == "gpu_hours" and np.nansum(np.abs(y)) == 0):
            ax.plot(x, y, "o-", color="#2b6cb0")
            drawn = True
    else:
        methods = sorted({m for t in trend for m in t["methods"]})
        for mth in methods:
            y = np.array([t["methods"].get(mth, {}).get(metric, {}).get("mean", np.nan) for t in trend])
            e = np.array([t["methods"].get(mth, {}).get(metric, {}).get("sem", np.nan) for t in trend])
            if np.isfinite(y).any():
                ax.errorbar(x, y, yerr=np.nan_to_num(e), fmt="o-", capsize=3, label=mth)
                drawn = True
        if drawn and methods:
            ax.legend(fontsize=8, loc="best")
    if not drawn:
        return None
    ax.axvspan(len(trend) - 1.4, len(trend) - 0.6, color="#f6e05e", alpha=0.35, lw=0)
    ax.set_xticks(x)
    ax.set_xticklabels([t["label"].split(" (")[0][-16:] for t in trend], rotation=30, ha="right", fontsize=8)
    ax.set_title(f"{metric} across runs (highlight: this run)", fontsize=10)
    ax.grid(alpha=0.3)
    return fig_to_data_uri(fig)


def diff_plot(pairs: pd.DataFrame, d: MetricDecision) -> str | None:
    """Histogram of paired differences with the mean, its CI and the regression threshold."""
    if d.metric in ("done_rate", "fid") or d.n == 0 or f"{d.metric}_run" not in pairs:
        return None
    ok = (pairs["status_run"].astype(str) == "done") & (pairs["status_base"].astype(str) == "done")
    diff = (pd.to_numeric(pairs.loc[ok, f"{d.metric}_run"], errors="coerce")
            - pd.to_numeric(pairs.loc[ok, f"{d.metric}_base"], errors="coerce")).dropna().to_numpy(dtype=float)
    if diff.size == 0:
        return None
    fig = Figure(figsize=(4.6, 3.0))
    ax = fig.add_subplot(111)
    ax.hist(diff, bins=min(30, max(5, diff.size // 2)), color="#90a4c8", edgecolor="#4a5a7a")
    if d.ci_low is not None and d.ci_high is not None:
        ax.axvspan(d.ci_low, d.ci_high, color="#f6ad55", alpha=0.4, label=f"{d.status}: mean, CI")
    if d.mean_diff is not None:
        ax.axvline(d.mean_diff, color="#c05621", lw=2)
    if d.threshold is not None:
        t = -d.threshold if d.direction == "higher" else d.threshold
        ax.axvline(t, color="#c53030", ls="--", lw=1.2, label="threshold")
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_title(f"{d.metric}: run - baseline (n={d.n}, {d.direction} is better)", fontsize=9)
    ax.legend(fontsize=7)
    return fig_to_data_uri(fig)


def distribution_plot(run: RunData, metric: str) -> str | None:
    """Per-method distribution of one metric (shown when there is no baseline to compare to)."""
    done = run.done()
    groups, labels = [], []
    for mth, g in done.groupby(done["method"].astype(str)):
        v = pd.to_numeric(g[metric], errors="coerce").dropna().to_numpy(dtype=float)
        if v.size:
            groups.append(v)
            labels.append(mth)
    if not groups:
        return None
    fig = Figure(figsize=(4.6, 3.0))
    ax = fig.add_subplot(111)
    ax.boxplot(groups, tick_labels=labels, showmeans=True)
    for i, v in enumerate(groups, start=1):
        ax.plot(np.full(v.size, i) + np.linspace(-0.08, 0.08, v.size), v, ".", color="#2b6cb0", alpha=0.6)
    ax.set_title(f"{metric} per method (n={sum(len(g) for g in groups)})", fontsize=9)
    ax.grid(alpha=0.3)
    return fig_to_data_uri(fig)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def _summary_section(run: RunData, base: RunData | None) -> str:
    rows = []
    for name, r in (("this run", run), ("baseline", base)):
        if r is None:
            continue
        s = r.summary()
        c = s["counts"]
        rows.append([esc(name), esc(r.label), fmt(c["total"]), fmt(c["done"]), fmt(c["failed"]),
                     fmt(c["rejected"]), fmt(s["wall_span_s"] / 3600 if s["wall_span_s"] else None),
                     fmt(s["asset_wall_s"] / 3600 if s["asset_wall_s"] else None), fmt(s["gpu_hours"]),
                     esc(", ".join(s["methods"])), esc(", ".join(s["devices"])),
                     esc(", ".join(f"{k} ({v})" for k, v in sorted(s.get("renderers", {}).items()))),
                     f'<span class="mono">{esc(", ".join(s["code_versions"])[:60])}</span>',
                     fmt(s["fid"]) + (f' <span class="muted">(n={fmt(s.get("fid_n_generated"))} vs '
                                      f'{fmt(s.get("fid_n_reference"))} ref.)</span>' if s["fid"] is not None else ""),
                     (f'{fmt(s.get("kid"), 4)} ± {fmt(s.get("kid_se"), 4)} <span class="muted">'
                      f'(n={fmt(s.get("kid_n_images"))} img / {fmt(s.get("kid_n_assets"))} assets)</span>')
                     if s.get("kid") is not None else "–"])
    stopped = "".join(
        f'<div class="err">{esc(name)} ({esc(r.label)}) stopped: run.json status '
        f'<b>{esc(str(r.extra["stopped"].get("status")))}</b>: '
        f'{esc(str(r.extra["stopped"].get("error") or "no reason recorded"))}</div>'
        for name, r in (("this run", run), ("baseline", base)) if r is not None and r.extra.get("stopped"))
    return "<h2>Run summary</h2>" + stopped + _table(
        ["", "run", "assets", "done", "failed", "rejected", "wall (h)", "asset time (h)", "GPU-hours",
         "methods", "devices", "renderer", "code version", "FID (point estimate)", "KID ± SE"], rows, left=2,
        elem_id="summary-table")


def _regression_section(decisions: list[MetricDecision], pairs: pd.DataFrame | None,
                        base: RunData | None, summary: dict) -> str:
    if base is None:
        return ('<h2>Regression check</h2><div class="banner none" id="verdict">No baseline: '
                'give --baseline or --history to compare runs.</div>')
    reg = summary["regressed_metrics"]
    banner = (f'<div class="banner bad" id="verdict">REGRESSION in {esc(", ".join(reg))}</div>' if reg else
              '<div class="banner good" id="verdict">No metric regressed.</div>')
    dc = summary["decision"]
    spread = dc.get("spreads") or {}
    rows, cls = [], []
    for d in decisions:
        sp = spread.get(d.metric)
        rows.append([esc(d.metric), esc(d.direction), fmt(d.n), fmt(d.baseline_mean), fmt(d.run_mean),
                     fmt(d.mean_diff), f"[{fmt(d.ci_low)}, {fmt(d.ci_high)}]", fmt(d.threshold),
                     "not measured" if sp is None else f"± {fmt(sp)}",
                     f"<b>{esc(d.status)}</b>", esc(d.note)])
        cls.append({"regressed": "regressed", "improved": "improved", "missing": "missing"}.get(d.status, ""))
    plots = [diff_plot(pairs, d) for d in decisions] if pairs is not None else []
    imgs = "".join(img_tag(p, f"plot-diff-{d.metric}", f"{d.metric} differences")
                   for p, d in zip(plots, decisions) if p)
    pairing = summary.get("pairing") or {}
    how = (f'{summary["n_paired"]} shared assets (prompt, seed, method)' if pairing.get("rule") != "prompt" else
           f'no shared assets: compared by prompt over {summary["n_paired"]} shared (prompt, method)')
    return ("<h2>Regression check</h2>" + banner +
            f'<div class="muted" id="pairing">Baseline: {esc(base.label)} — {how}. '
            f'<b>{esc(pairing.get("text", ""))}</b>. Set-level KID: decided on the difference ± its '
            f'standard errors (bootstrap over assets); FID: point estimate with its image counts, never '
            f'gated.</div><div class="muted">Rule <span class="mono">{esc(dc["rule"])}</span>, '
            f'{int(dc["confidence"] * 100)}% bootstrap CI of the mean paired difference, '
            f'{dc["n_boot"]} resamples, seed {dc["seed"]}. Run-to-run spread: the measured SD of '
            f'the mean difference between clean runs, which the threshold was set from'
            + (f' ({esc(dc["spread_source"])})' if dc.get("spread_source") else '') + '.</div>'
            + _table(["metric", "better", "n", "baseline", "run", "run − base", "CI", "threshold",
                      "run-to-run spread", "status", "note"], rows, cls, elem_id="regression-table")
            + f'<div class="plots">{imgs}</div>')


def _method_section(run: RunData) -> str:
    ms = run.metrics()
    df = run.df
    rows = []
    for mth, g in df.groupby(df["method"].astype(str)):
        done = g[g["status"].astype(str) == "done"]
        r = [esc(mth), fmt(len(g)), fmt(len(done)), fmt(int((g["status"].astype(str) == "failed").sum()))]
        for m in ms:
            v = pd.to_numeric(done[m], errors="coerce").dropna()
            r.append(f"{fmt(v.mean())} ± {fmt(v.std(ddof=1) if len(v) > 1 else None)}" if len(v) else "–")
        rows.append(r)
    return "<h2>Metrics per method</h2>" + _table(
        ["method", "assets", "done", "failed"] + [f"{m} (mean ± sd)" for m in ms], rows, elem_id="method-table")


def _prompt_section(run: RunData, pairs: pd.DataFrame | None, max_rows: int) -> str:
    ms = run.metrics()
    done = run.done()
    if done.empty or not ms:
        return "<h2>Metrics per prompt</h2><p class='muted'>No finished assets with metrics.</p>"
    key = [done["prompt"].astype(str), done["method"].astype(str)]
    g = done[ms].apply(pd.to_numeric, errors="coerce").groupby(key)  # vectorised: 10k prompts in ms
    tab = g.mean()
    tab["n"] = g.size()
    if pairs is not None and len(pairs):
        ok = (pairs["status_run"].astype(str) == "done") & (pairs["status_base"].astype(str) == "done")
        p = pairs[ok].reset_index()
        for m in ms:
            if f"{m}_base" in p:
                p[f"d_{m}"] = pd.to_numeric(p[f"{m}_run"], errors="coerce") - pd.to_numeric(p[f"{m}_base"], errors="coerce")
        dcols = [c for c in p.columns if c.startswith("d_")]
        if dcols:
            dd = p.groupby([p["prompt"].astype(str), p["method"].astype(str)])[dcols].mean()
            tab = tab.join(dd, how="left")
    sort_col = f"d_{ms[0]}" if f"d_{ms[0]}" in tab else ms[0]
    tab = tab.sort_values(sort_col, na_position="last")
    shown = tab.head(max_rows)
    cols = ms + [c for c in tab.columns if c.startswith("d_")]
    rows = [[esc(pr), esc(mt), str(int(r["n"]))] + [fmt(r[c]) for c in cols] for (pr, mt), r in shown.iterrows()]
    more = (f'<div class="muted">showing {len(shown)} of {len(tab)} prompt/method rows, sorted by '
            f'{esc(sort_col)} (worst first); report.max_prompt_rows to change</div>') if len(tab) > len(shown) else ""
    head = ["prompt", "method", "n"] + [c.replace("d_", "Δ ") for c in cols]
    return ("<h2>Metrics per prompt</h2>" + more +
            f'<div class="scroll">{_table(head, rows, left=2, elem_id="prompt-table")}</div>')


def _trend_section(trend: list[dict], metrics: list[str]) -> str:
    if not trend:
        return ""
    imgs = []
    for m in metrics + ["done_rate", "gpu_hours", "fid"]:
        p = trend_plot(trend, m)
        if p:
            imgs.append(img_tag(p, f"plot-trend-{m}", f"{m} trend"))
    return (f"<h2>Trends across {len(trend)} runs</h2>"
            f'<div class="plots" id="trends">{"".join(imgs)}</div>')


def _distribution_section(run: RunData, base: RunData | None) -> str:
    if base is not None:
        return ""
    imgs = [img_tag(p, f"plot-dist-{m}", f"{m} distribution")
            for m in run.metrics() for p in [distribution_plot(run, m)] if p]
    return ("<h2>Metric distributions</h2>" + f'<div class="plots">{"".join(imgs)}</div>') if imgs else ""


def _contact_sheet(run: RunData, base: RunData | None, movers: pd.DataFrame, thumb_px: int,
                   views: dict | None = None) -> str:
    """Cards of the movers; `views` (mover key -> viewer specs) adds a 3D button per card that opens
    tonight and the baseline side by side, orbiting together."""
    if movers is None or movers.empty:
        return ""
    title = "Assets whose metrics moved most" if base is not None else "Lowest-scoring assets (no baseline)"
    ms = run.metrics()
    cards = []
    for i, (idx, row) in enumerate(movers.iterrows()):
        if isinstance(idx, tuple) and len(idx) == len(KEY):
            key = dict(zip(KEY, idx))
        elif isinstance(idx, tuple):  # paired by prompt: (prompt, method), the seed shown is tonight's
            key = {"prompt": idx[0], "method": idx[1], "seed": row.get("seed_run", "all")}
        else:
            key = {k: row.get(k) for k in KEY}
        head = (f'<div><b>{esc(key["prompt"])}</b> <span class="muted">seed {esc(key["seed"])}, '
                f'{esc(key["method"])}</span></div>')
        if base is not None:
            vals = " · ".join(f"{esc(m)} {fmt(row.get(f'{m}_base'))} → {fmt(row.get(f'{m}_run'))}" for m in ms)
            body = (asset_figure(row, run.root, "_run", thumb_px, f"thumb-run-{i}", "this run")
                    + asset_figure(row, base.root, "_base", thumb_px, f"thumb-base-{i}", "baseline"))
        else:
            vals = " · ".join(f"{esc(m)} {fmt(row.get(m))}" for m in ms)
            body = asset_figure(row, run.root, "", thumb_px, f"thumb-run-{i}", "this run")
        spec = (views or {}).get(idx if isinstance(idx, tuple) else None)
        if spec:
            body += (f'<button type="button" class="open3d" id="open3d-{i}" data-host="v3d-{i}" '
                     f'data-views="{esc(json.dumps(spec))}">3D: {"tonight | baseline" if len(spec) > 1 else "view"}'
                     f'</button><div class="vhost" id="v3d-{i}"></div>')
        cards.append(f'<div class="card" style="min-width:{thumb_px + 40}px">{head}<div class="mono">{vals}</div>{body}</div>')
    return f"<h2>{title}</h2>" + f'<div class="sheet" id="contact-sheet">{"".join(cards)}</div>'


def _failures_section(run: RunData, max_rows: int = 200, csv_name: str | None = None) -> str:
    """Counts by reason and status, then the first `max_rows` failed/rejected assets; all of them are
    in `csv_name` beside the page (a 100k-row night stays a small page)."""
    df = run.df
    bad = df[df["status"].astype(str) != "done"]
    if bad.empty:
        return '<h2>Failures</h2><p class="muted" id="failures">None.</p>'
    by_status = bad["status"].astype(str).value_counts()
    counts = ", ".join(f"{esc(k)} {int(v)}" for k, v in by_status.items())
    more = (f'<div class="muted" id="failures-more">showing the first {max_rows} of {len(bad)}; all in '
            f'<a href="{esc(csv_name)}">{esc(csv_name)}</a></div>' if len(bad) > max_rows and csv_name else
            (f'<div class="muted">all {len(bad)} also in <a href="{esc(csv_name)}">{esc(csv_name)}</a></div>'
             if csv_name else ""))
    rows = []
    for _, r in bad.head(max_rows).iterrows():
        err = str(r.get("error") or "")
        short = esc(err[:300]) + ("…" if len(err) > 300 else "")
        cell = f'<div class="err">{short}</div>' + (
            f"<details><summary>full error</summary><div class='err mono'>{esc(err)}</div></details>"
            if len(err) > 300 else "")
        rows.append([esc(r.get("status")), esc(r.get("prompt")), esc(r.get("seed")), esc(r.get("method")),
                     fmt(r.get("attempts")), f'<span class="mono">{esc(str(r.get("asset_id", ""))[:16])}</span>',
                     cell])
    by_reason = bad["error"].fillna("").astype(str).str.split("\n").str[0].str[:120].value_counts() \
        if "error" in bad else pd.Series(dtype=int)
    n_reasons = len(by_reason)
    reasons = _table(["first line of error", "assets"],
                     [[esc(k or "(no message)"), fmt(int(v))] for k, v in by_reason.head(50).items()],
                     elem_id="failure-reasons") + (
        f'<div class="muted">{n_reasons - 50} more reasons in the CSV</div>' if n_reasons > 50 else "")
    return (f"<h2>Failures ({len(bad)}: {counts})</h2>" + reasons + more +
            f'<div class="scroll">{_table(["status", "prompt", "seed", "method", "attempts", "asset", "error"], rows, left=4, elem_id="failures")}</div>')


def _assets_section(n_total: int) -> str:
    return (f"<h2>Assets ({n_total})</h2>"
            '<div class="muted">Worst first (failed, then the largest drop or the lowest score). Click a '
            'column to sort, a row for its 3D view, turntable, training curve, files and record.</div>'
            '<div id="asset-table-host"><noscript>The per-asset table needs JavaScript; every row is in '
            'assets.csv beside this page.</noscript></div>')


def _notes(notes: list[tuple[str, str]]) -> str:
    return "".join(f'<div class="banner {esc(k)}" id="note-{i}">{esc(t)}</div>' for i, (k, t) in enumerate(notes))


def render_page(*, run: RunData, base: RunData | None, past: list[RunData],
                decisions: list[MetricDecision], pairs: pd.DataFrame | None,
                movers: pd.DataFrame, summary: dict, rcfg: Any, page: dict | None = None,
                views: dict | None = None, nightly: bool = False,
                notes: list[tuple[str, str]] | None = None, index_href: str | None = None) -> str:
    """The page. `page`: the config report.js reads (camera, rows_js, viewer_js; None = no
    interactive part); `views`: mover key -> 3D viewer specs; `nightly`: a --history run."""
    metrics = run.metrics()
    body = "".join([
        _notes(notes or []),
        _summary_section(run, base),
        _regression_section(decisions, pairs, base, summary),
        _assets_section(summary["run"]["counts"]["total"]) if page else "",
        _contact_sheet(run, base, movers, rcfg.thumb_px, views),
        _trend_section(summary["trend"], metrics),
        _distribution_section(run, base),
        _method_section(run),
        _prompt_section(run, pairs, rcfg.max_prompt_rows),
        _failures_section(run, rcfg.max_failure_rows, "failures.csv" if page else None),
    ])
    kind = "nightly report" if nightly else "report"
    scripts = ""
    if page:
        from stages.report.assets import PAGE_JS, js_assign
        scripts = f"<script>{js_assign('SCTD3D_PAGE', page)}</script><script src='{PAGE_JS}'></script>"
    nav = f' · <a href="{esc(index_href)}" id="index-link">all nights</a>' if index_href else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'><link rel='icon' href='data:,'>"
        f"<title>sctd3d {kind} — {esc(run.label)}</title><style>{CSS}</style></head><body>"
        f"<h1>sctd3d {kind}</h1><div class='muted'>{esc(run.uri)} · generated "
        f"{esc(summary['generated_at'][:19])} UTC · summary.json beside this file{nav}</div>"
        f"{body}{scripts}</body></html>")
