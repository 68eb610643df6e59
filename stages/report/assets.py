"""The report folder's per-asset part: table rows, 3D-viewer data, copied videos, the viewer bundle.

Layout beside report.html (everything the page loads lies in this folder, so it opens from
file://, from a web server and from object storage with no network):
- `viewer/viewer.js`: the Spark + three.js bundle built by tools/report-viewer/setup.sh (vendored
  from npm, pinned in its package-lock.json), and its licences;
- `report.js`: the page's own code (stages/report/static/report.js);
- `data/rows.js`: the per-asset table (worst first), at most `report.table_max_rows` rows; all rows
  in `assets.csv`;
- `a/<key>.js`: one asset's splat file (`.spz` when the run has one next to the .ply, else the
  `.ply`) as base64 in a script, loaded only when its viewer opens (file:// forbids fetch(), not
  <script>); `a/<key>.mp4`: its turntable. At most `report.viewer_max_assets` assets, worst first,
  plus the baselines of the movers (side-by-side).
File names are hashes of the asset key: nothing from the manifest becomes a path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import posixpath
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd

from common.storage import join_uri
from stages.report.data import KEY, RunData, _read_json, resolve_ref

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
VIEWER_DIST = Path(__file__).resolve().parents[2] / "tools" / "report-viewer" / "dist"
VIEWER_ENV = "SCTD3D_REPORT_VIEWER"  # another built dist/ folder (a deployment without the repo's tools/)
ROWS_JS, PAGE_JS, VIEWER_JS, CSV = "data/rows.js", "report.js", "viewer/viewer.js", "assets.csv"
SPLAT_EXT = ("spz", "ply")  # compact web format first; the loader in report.js is keyed by extension


def viewer_dist() -> Path | None:
    d = Path(os.environ.get(VIEWER_ENV) or VIEWER_DIST)
    return d if (d / "viewer.js").is_file() else None


def safe_key(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).hexdigest()[:20]


def js_assign(name: str, obj: Any) -> str:
    """`window.NAME = <json>;` safe inside any HTML/JS context (no '<', '>' or '&' left raw)."""
    txt = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str)
    txt = txt.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"window.{name}={txt};\n"


def _finite(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (pd.Timestamp,)):
        return None if pd.isna(v) else v.isoformat()
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_finite(x) for x in v]
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


# ----------------------------------------------------------------------------------------------
# Cameras: the render stage's frame 0 (the viewer starts there and orbits like the turntable)
# ----------------------------------------------------------------------------------------------
def orbit_frame0_c2w(elevation_deg: float, radius: float) -> np.ndarray:
    """OpenGL camera-to-world (4x4) of frame 0 of kernels.cameras.orbit_cameras (azimuth 0: on +z,
    looking at the origin, y up), in numpy so the report does not import torch (20 s on a loaded
    CPU). tests/test_report.py checks it equals orbit_cameras + stages.export.views.c2w_opengl."""
    el = math.radians(elevation_deg)
    eye = np.array([0.0, radius * math.sin(el), radius * math.cos(el)])
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, -down, -fwd, eye
    return m


def page_camera(run: RunData, max_px: int = 512) -> dict:
    """Frame 0 of the run's evaluation orbit (its run.json config's `render` section; defaults when
    absent) as an OpenGL camera-to-world matrix (row-major), vertical FOV and background."""
    from common.config import RenderConfig

    rc = RenderConfig()
    cfg = (run.extra.get("run_json") or {}).get("config")
    src = cfg.get("render") if isinstance(cfg, dict) and isinstance(cfg.get("render"), dict) else {}

    def num(k: str, lo: float, hi: float) -> float:
        v = src.get(k, getattr(rc, k))
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
        return float(v) if ok else float(getattr(rc, k))

    el, radius, fovy = num("elevation_deg", -89, 89), num("radius", 1e-3, 1e4), num("fovy", 1e-3, 3.1)
    res = int(num("resolution", 8, 4096))
    bg = src.get("background", rc.background)
    if not (isinstance(bg, list) and len(bg) == 3 and all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in bg)):
        bg = list(rc.background)
    return {"c2w": orbit_frame0_c2w(el, radius).reshape(-1).tolist(), "fovy_deg": math.degrees(fovy),
            "size": min(res, max_px), "background": [float(x) for x in bg],
            "frame0": {"elevation_deg": el, "radius": radius, "fovy": fovy, "azimuth_deg": 0.0}}


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def _read(uri: str) -> bytes | None:
    try:
        fs, p = fsspec.core.url_to_fs(uri)
        if not fs.isfile(p):
            return None
        with fs.open(p, "rb") as fh:
            return fh.read()
    except (OSError, ValueError) as e:
        log.warning("report: cannot read %s: %s", uri, e)
        return None


def _asset_dir(row: pd.Series, root: str, suffix: str) -> str | None:
    a = resolve_ref(row.get(f"asset_uri{suffix}"), root)
    if a:
        return posixpath.dirname(a.rstrip("/")) if a.rstrip("/").endswith(".ply") else a.rstrip("/")
    f = resolve_ref(row.get(f"frames_uri{suffix}"), root)
    return posixpath.dirname(f.rstrip("/")) if f else None


def link(target: str, out_dir: str) -> str:
    """A link from the report folder to a run file: relative when both are on the same filesystem
    (a moved or synced tree keeps it), else the full URI."""
    if "://" in target or "://" in out_dir:
        ta, oa = target.split("://", 1), out_dir.split("://", 1)
        if len(ta) == 2 and len(oa) == 2 and ta[0] == oa[0] and ta[1].split("/")[0] == oa[1].split("/")[0]:
            return posixpath.relpath(ta[1], oa[1])
        return target
    return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(out_dir))).as_posix()


def curve_of(meta: dict) -> dict | None:
    """Training curve from meta.json: its `curve` ({"it": [...], "<term>": [...]}, when the generate
    stage records one) or the term summaries (first 10 %, median, last 10 % of the iterations)."""
    c = meta.get("curve")
    if isinstance(c, dict) and isinstance(c.get("it"), list) and c["it"]:
        n = len(c["it"])
        terms = {str(k): [_finite(x) for x in v] for k, v in c.items()
                 if k != "it" and isinstance(v, list) and len(v) == n}
        return {"it": [_finite(x) for x in c["it"]], "terms": terms}
    terms = meta.get("terms")
    it = meta.get("iterations")
    if not isinstance(terms, dict) or not terms:
        return None
    n = it if isinstance(it, (int, float)) and it > 0 else 1
    out = {}
    for k, s in terms.items():
        if isinstance(s, dict) and all(isinstance(s.get(q), (int, float)) for q in ("first10pct", "median", "last10pct")):
            out[str(k)] = [_finite(s["first10pct"]), _finite(s["median"]), _finite(s["last10pct"])]
    return {"it": [0.05 * n, 0.5 * n, 0.95 * n], "terms": out, "summary": True} if out else None


class FolderWriter:
    """Writes the report folder's extra files (atomic locally, through fsspec elsewhere)."""

    def __init__(self, out_dir: str, write_bytes) -> None:
        self.out_dir, self._write = out_dir, write_bytes
        self.written: list[str] = []
        self.views: dict[str, dict | None] = {}  # asset folder -> its view spec (written once)

    def write(self, rel: str, data: bytes) -> str:
        self._write(join_uri(self.out_dir, *rel.split("/")), data)
        self.written.append(rel)
        return rel


def wrap_splat(w: FolderWriter, asset_dir: str) -> dict | None:
    """a/<key>.js holding the asset's splat file (key: a hash of its folder, written once per report);
    the view spec for report.js, or None when the asset has no splat file."""
    if asset_dir in w.views:
        v = w.views[asset_dir]
        return dict(v) if v else None
    key = safe_key(asset_dir)
    w.views[asset_dir] = None
    for ext in SPLAT_EXT:
        data = _read(posixpath.join(asset_dir, f"asset.{ext}"))
        if data:
            b64 = base64.b64encode(data).decode("ascii")
            js = f'(window.__sctd3dAssets=window.__sctd3dAssets||{{}})["{key}"]="{b64}";\n'
            w.views[asset_dir] = {"src": w.write(f"a/{key}.js", js.encode("ascii")), "key": key,
                                  "format": ext, "bytes": len(data)}
            return dict(w.views[asset_dir])
    return None


def copy_video(w: FolderWriter, row: pd.Series, root: str, suffix: str, key: str) -> str | None:
    v = resolve_ref(row.get(f"video_uri{suffix}"), root)
    if not v:
        return None
    ext = posixpath.splitext(v)[1].lower()
    if ext not in (".mp4", ".gif", ".webm"):
        return None
    data = _read(v)
    return w.write(f"a/{key}{ext}", data) if data else None


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------
def worst_first(df: pd.DataFrame, sort_cols: list[str]) -> pd.DataFrame:
    """Not-done assets first, then ascending by the first available sort column (worst value first)."""
    d = df.assign(_bad=(df["status"].astype(str) != "done").astype(int))
    keys, asc = ["_bad"], [False]
    for c in sort_cols:
        if c in d and pd.to_numeric(d[c], errors="coerce").notna().any():
            d["_s"] = pd.to_numeric(d[c], errors="coerce")
            keys, asc = keys + ["_s"], asc + [True]
            break
    return d.sort_values(keys, ascending=asc, na_position="last", kind="stable").drop(
        columns=[c for c in ("_bad", "_s") if c in d])


def build_rows(run: RunData, base: RunData | None, pairing: str | None, rcfg: Any, out_dir: str,
               w: FolderWriter, floors: dict[str, float], side_by_side: set) -> dict:
    """The table data (written to data/rows.js by the caller) and the per-asset files."""
    ms = run.metrics()
    df = run.by_key().reset_index()
    delta = base is not None and pairing == "asset"
    if delta:
        b = base.by_key()[[c for c in ms + ["asset_uri", "frames_uri", "video_uri", "status"]
                           if c in base.df.columns]]
        df = df.merge(b.add_suffix("_base"), how="left", left_on=list(KEY), right_index=True)
        for m in ms:
            if f"{m}_base" in df:
                df[f"d_{m}"] = pd.to_numeric(df[m], errors="coerce") - pd.to_numeric(df[f"{m}_base"], errors="coerce")
    df = worst_first(df, ([f"d_{m}" for m in ms] if delta else []) + ms)
    cols = [{"key": "prompt", "label": "prompt"}, {"key": "method", "label": "method"},
            {"key": "seed", "label": "seed", "num": True}, {"key": "status", "label": "status"}]
    for m in ms:
        c = {"key": m, "label": m, "num": True}
        if m in floors:
            c["floor"], c["title"] = floors[m], f"highlighted at or below the per-asset floor {floors[m]:g}"
        cols.append(c)
        if delta:
            cols.append({"key": f"d_{m}", "label": f"Δ {m}", "num": True, "delta": True,
                         "title": "this run − baseline (same prompt, seed, method)"})
    cols += [{"key": "renderer", "label": "renderer"}, {"key": "wall_s", "label": "time (s)", "num": True},
             {"key": "num_gaussians", "label": "Gaussians", "num": True}, {"key": "_extra", "label": "", "hidden": True}]
    cols = [c for c in cols if c["key"] == "_extra" or c["key"] in df.columns]
    vis = [c for c in cols if not c.get("hidden")]

    # every row in assets.csv; the first table_max_rows in the page
    csv_cols = [c["key"] for c in vis] + [c for c in ("asset_id", "error", "asset_uri", "video_uri") if c in df]
    w.write(CSV, df[list(dict.fromkeys(csv_cols))].to_csv(index=False).encode("utf-8"))
    shown = df.head(rcfg.table_max_rows)
    # column-wise (a Series lookup per cell costs ~100x a list index: 20,000 rows in seconds)
    data_cols = [c for c in cols if c["key"] != "_extra"]
    colvals = []
    for c in data_cols:
        vals = shown[c["key"]].tolist()
        if c.get("num"):
            colvals.append([_finite(v) for v in pd.to_numeric(shown[c["key"]], errors="coerce").astype(float).tolist()])
        else:
            colvals.append(["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in vals])
    get = lambda col: shown[col].tolist() if col in shown else [None] * len(shown)  # noqa: E731
    asset_uris, frames_uris, errors, statuses = get("asset_uri"), get("frames_uri"), get("error"), get("status")
    keys = list(zip(*(shown[k].tolist() for k in KEY)))
    rel_root = link(run.root, out_dir)
    root_pfx = run.root.rstrip("/") + "/"

    def to_page(path: str) -> str:  # link() for paths under the run root without a relpath per row
        return posixpath.join(rel_root, path[len(root_pfx):]) if path.startswith(root_pfx) else link(path, out_dir)

    run_json_link = to_page(join_uri(run.root, "run.json"))
    rows, n_views, view_bytes = [], 0, 0
    for i in range(len(shown)):
        extra: dict = {"links": []}
        a = resolve_ref(asset_uris[i], run.root) or None
        f = resolve_ref(frames_uris[i], run.root) or None
        adir = ((posixpath.dirname(a.rstrip("/")) if a.rstrip("/").endswith(".ply") else a.rstrip("/")) if a
                else (posixpath.dirname(f.rstrip("/")) if f else None))
        if adir:
            extra["links"] += [(".ply", to_page(posixpath.join(adir, "asset.ply"))),
                               ("meta.json", to_page(posixpath.join(adir, "meta.json")))]
        extra["links"].append(("run.json", run_json_link))
        err = errors[i]
        if isinstance(err, str) and err:
            extra["error"] = err[:2000]
        done = str(statuses[i]) == "done"
        pair_key = keys[i]
        if done and adir and (i < rcfg.viewer_max_assets or pair_key in side_by_side):
            r = shown.iloc[i]
            key = safe_key(run.root, r.get("asset_id") or "", *pair_key)
            view = wrap_splat(w, adir)
            if view:
                view.update(label="tonight" if delta else "this run", role="run")
                extra["views"] = [view]
                n_views += 1
                view_bytes += view["bytes"]
                bdir = _asset_dir(r, base.root, "_base") if delta else None
                if bdir and pair_key in side_by_side:
                    bview = wrap_splat(w, bdir)
                    if bview:
                        bview.update(label="baseline", role="base")
                        extra["views"].append(bview)
                        view_bytes += bview["bytes"]
            extra["video"] = copy_video(w, r, run.root, "", key)
            meta = _read_json(posixpath.join(adir, "meta.json"))
            if isinstance(meta, dict):
                extra["curve"] = curve_of(meta)
            extra["record"] = {k: _finite(v) for k, v in r.items()
                               if not str(k).startswith(("d_", "_")) and not str(k).endswith("_base")}
        elif done:
            extra["no_view"] = (f"no 3D view: only the {rcfg.viewer_max_assets} worst assets carry one "
                                f"(report.viewer_max_assets)" if adir else "no asset file recorded")
        rows.append([cv[i] for cv in colvals] + [extra])
    cols = data_cols + [c for c in cols if c["key"] == "_extra"]
    return {"columns": cols, "rows": rows, "page_rows": rcfg.page_rows, "total": int(len(df)),
            "omitted": int(len(df) - len(shown)), "csv": CSV, "n_views": n_views, "view_bytes": view_bytes}


def copy_static(w: FolderWriter) -> str | None:
    """report.js and the viewer bundle into the folder; the viewer's path, or None when not built."""
    w.write(PAGE_JS, (STATIC / "report.js").read_bytes())
    d = viewer_dist()
    if d is None:
        log.warning("report: no 3D viewer bundle (run tools/report-viewer/setup.sh, part of `make setup`); "
                    "the page shows turntables and pictures only")
        return None
    w.write(VIEWER_JS, (d / "viewer.js").read_bytes())
    if (d / "LICENSES.txt").is_file():
        w.write("viewer/LICENSES.txt", (d / "LICENSES.txt").read_bytes())
    return VIEWER_JS
