"""The dashboard across nights: one page over the history folder, one row per night.

Rebuilt by every `sctd3d report --history DIR` (default `DIR/index.html`), so a team bookmarks one
URL. A night's decision and link come from its report's summary.json: tonight's from the report
being written, earlier nights' from `<night>/report/summary.json` (the layout the README's cron line
uses); a night without one is listed with its counts and metric means and "no report".
"""

from __future__ import annotations

import os
import posixpath
import pandas as pd

from stages.report.assets import link
from common.storage import join_uri
from stages.report.data import RunData, _read_json
from stages.report.html import CSS, esc, fmt

REPORT_DIR = "report"


def _night_summary(run: RunData) -> tuple[dict | None, str | None]:
    """(summary.json, its report page URI) of a night's report in the conventional place."""
    d = join_uri(run.root, REPORT_DIR)
    s = _read_json(join_uri(d, "summary.json"))
    if not isinstance(s, dict):
        return None, None
    name = s.get("report_html")
    ok = isinstance(name, str) and name.endswith((".html", ".htm")) and "/" not in name and "\\" not in name
    return s, (join_uri(d, name) if ok else None)


def _decision(s: dict | None) -> tuple[str, str]:
    """(css class, text) of a night's decision."""
    if s is None:
        return "", "no report"
    if s.get("baseline") is None:
        return "none", "no baseline"
    reg = s.get("regressed_metrics") or []
    if reg:
        return "regressed", "REGRESSION: " + ", ".join(map(str, reg))
    return "improved", "ok"


def build_index(nights: list[RunData], tonight: RunData, tonight_summary: dict, tonight_page: str,
                index_uri: str, metrics: list[str]) -> str:
    """The index page (HTML) for `nights` (oldest first, tonight included), newest first on the page."""
    index_dir = posixpath.dirname(index_uri) if "://" in index_uri else os.path.dirname(os.path.abspath(index_uri))
    rows = []
    for r in reversed(nights):
        if r is tonight:
            s, page = tonight_summary, tonight_page
        else:
            s, page = _night_summary(r)
        c = r.counts()
        done = r.done()
        means = []
        for m in metrics:
            v = pd.to_numeric(done[m], errors="coerce").dropna() if m in done else pd.Series(dtype=float)
            means.append(fmt(v.mean()) if len(v) else "–")
        cls, text = _decision(s)
        href = link(page, index_dir) if page else None
        name = esc(r.label)
        cell = f'<a href="{esc(href)}">{name}</a>' if href else name
        rows.append(
            f'<tr class="{cls}"><td class="l">{cell}</td>'
            f'<td class="l"><b>{esc(text)}</b></td><td>{c["total"]}</td><td>{c["done"]}</td><td>{c["failed"]}</td>'
            f'<td>{c["rejected"]}</td>' + "".join(f"<td>{x}</td>" for x in means)
            + f'<td>{fmt(r.fid_info.get("kid"), 4)}</td><td>{fmt(r.fid)}</td>'
            f'<td class="l mono">{esc(", ".join(r.summary()["generation_hashes"])[:40])}</td></tr>')
    head = (["night", "decision", "assets", "done", "failed", "rejected"] + [f"{m} (mean)" for m in metrics]
            + ["KID", "FID", "generation hash"])
    th = "".join(f'<th class="{"l" if i < 2 else ""}">{esc(h)}</th>' for i, h in enumerate(head))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'><title>sctd3d nightly — all nights"
            f"</title><style>{CSS}</style></head><body><h1>sctd3d nightly — all nights</h1>"
            f"<div class='muted'>{len(nights)} nights, newest first; rebuilt by each night's report "
            f"(generated {esc(tonight_summary.get('generated_at', '')[:19])} UTC)</div>"
            f"<table id='nights'><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>")


def index_metrics(nights: list[RunData]) -> list[str]:
    seen: list[str] = []
    for r in nights:
        seen += [m for m in r.metrics() if m not in seen]
    return seen


def default_index_uri(history: str) -> str:
    return join_uri(history, "index.html")
