"""`sctd3d export`: a finished run -> a training-ready synthetic 3D dataset.

Why this shape: the per-asset work (re-rendering 100+ views) fans out through the same executors
as `run` (local, or Ray CPU/GPU workers); the driver then writes the run-level files (shards,
index, card). Resumable and idempotent like `run`: an asset folder becomes visible only when
complete (locally: built under a hidden `.tmp-` name and renamed; on object stores its
`export.json` marker is written last), a shard is one atomic write, and a re-run reuses every
asset, shard and file whose inputs did not change, writing nothing for them.

Dataset layout (relative to DATASET_URI): `assets/<id[:2]>/<id>/` (asset.ply, asset.spz,
images/, depth/, transforms.json, export.json), `shards/shard-NNNNN.tar`, `index.parquet`,
`skipped.json`, `README.md` (+ `card/`), `export.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import fsspec

from common import manifest
from pipeline.executors import executor_names, executor_options, make_executor
from common.lock import RunLock
from common.storage import (Storage, StorageError, asset_relpath, is_local, open_storage,
                              safe_relpath)
from common import plugins
from common.config import ConfigError, mesh_config
from stages.export import card, index, prune, shards
from stages.export import formats as fmt_registry
from stages.export.formats.ply import FILE as PLY_FILE
from stages.export.asset import MESH_FORMATS
from stages.export.asset import (PREVIEW_FILE, TRANSFORMS_FILE, AssetSkip, ExportSpec,
                                 build_asset, sha256)
from stages.export.select import DEFAULT_WHERE, select

log = logging.getLogger(__name__)

MARKER = "export.json"  # per asset folder (written last) and at the dataset root
SKIPPED_FILE = "skipped.json"
README_FILE = "README.md"


class ExportError(ValueError):
    """Bad export input (not a run, an empty selection, bad options): one line for the user."""


@dataclass
class ExportSummary:
    out: str
    selected: int
    exported: int
    reused: int      # assets already complete from an earlier export (not rewritten)
    skipped: int
    shards: int
    shards_reused: int
    wall_s: float
    removed: int = 0  # asset folders of an earlier export no longer selected (deleted)

    def line(self) -> str:
        return (f"{self.out}: {self.exported} assets exported ({self.reused} already done), "
                f"{self.skipped} skipped, {self.shards} shard(s) ({self.shards_reused} already "
                f"done) ({self.wall_s:.1f} s)")

    def where(self) -> str:
        root = self.out.rstrip("/")
        return "\n".join([f"index:   {root}/{index.INDEX_FILE}",
                          f"card:    {root}/{README_FILE}",
                          f"shards:  {root}/{shards.SHARDS_DIR}/",
                          f"skipped: {root}/{SKIPPED_FILE}"])


# ----------------------------------------------------------------------------------------------
# One asset (runs in a worker)
# ----------------------------------------------------------------------------------------------
def _read_marker(st: Storage, rel: str) -> Optional[dict]:
    try:
        return json.loads(st.read_bytes(rel, MARKER))
    except (FileNotFoundError, ValueError):
        return None


def _publish_local(st: Storage, rel: str, files: dict[str, bytes], marker: bytes) -> None:
    """Build the folder under a hidden temp name next to its final place, then rename it."""
    final = st.path(rel)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(final)}-{uuid.uuid4().hex[:8]}")
    try:
        for name, data in {**files, MARKER: marker}.items():
            path = os.path.join(tmp, safe_relpath(name))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # durable before the rename makes the folder visible
        old = None
        if os.path.exists(final):  # an export with other settings: replace it whole
            old = f"{tmp}-old"
            os.replace(final, old)
        os.replace(tmp, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish_remote(st: Storage, rel: str, files: dict[str, bytes], marker: bytes) -> None:
    """Object stores: every file is one PUT; the marker (what makes the folder complete) last.
    Files of an earlier export with other settings that this one does not have are removed."""
    old = _read_marker(st, rel)
    if old is not None:
        st.rm(f"{rel}/{MARKER}")
    for name, data in files.items():
        st.write_bytes(f"{rel}/{name}", data)
    for name in sorted(set((old or {}).get("meta", {}).get("files") or []) - set(files)):
        st.rm(f"{rel}/{safe_relpath(name)}")
    st.write_bytes(f"{rel}/{MARKER}", marker)


def _clean_stale_temp(st: Storage, rel: str) -> None:
    if not st.local:
        return
    parent, name = os.path.split(st.path(rel))
    if os.path.isdir(parent):
        for entry in os.listdir(parent):
            if entry.startswith(f".tmp-{name}-"):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def export_asset(task: dict) -> dict:
    """Export one asset (a worker's unit). Returns {"ok": True, ...meta} or {"ok": False,
    "reason": ...} for an asset that cannot be exported (recorded as skipped, not retried)."""
    plugins.load_plugins(task.get("plugins") or [])  # the driver's plugin modules (formats)
    st = open_storage(task["out"])
    rel, asset_id = task["rel"], task["asset_id"]
    spec = ExportSpec(**{**task["spec"], "formats": tuple(task["spec"]["formats"])})
    try:
        with fsspec.open(task["ply_uri"], "rb") as f:
            ply = f.read()
    except FileNotFoundError:
        return {"ok": False, "asset_id": asset_id, "reason": f"asset.ply missing: {task['ply_uri']}"}
    key = spec.key(sha256(ply))
    done = _read_marker(st, rel)
    if done is not None and done.get("key") == key:
        return {"ok": True, "reused": True, **done["meta"], "marker_sha256": done["sha"]}
    _clean_stale_temp(st, rel)
    try:
        files, meta = build_asset(asset_id, ply, spec, task.get("prompt") or "")
    except AssetSkip as e:
        return {"ok": False, "asset_id": asset_id, "reason": str(e)}
    meta["files"] = sorted(files)
    meta["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    body = {"asset_id": asset_id, "key": key, "meta": meta}
    body["sha"] = sha256(json.dumps(body, sort_keys=True).encode())
    marker = json.dumps(body, indent=1, sort_keys=True).encode()
    (_publish_local if st.local else _publish_remote)(st, rel, files, marker)
    return {"ok": True, "reused": False, **meta, "marker_sha256": body["sha"]}


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------
def _open_run(run_uri: str) -> tuple[Storage, dict]:
    if is_local(run_uri):
        path = os.path.expanduser(run_uri.split("://", 1)[-1])
        if not os.path.isdir(path):
            raise ExportError(f"RUN_URI {run_uri!r} does not exist; pass the --out folder of a "
                              f"`sctd3d run`")
    st = open_storage(run_uri)
    has_manifest = st.exists(manifest.COMPACTED) or bool(st.ls(manifest.PARTS_DIR))
    if not has_manifest:
        raise ExportError(f"RUN_URI {run_uri!r} is not a run: no manifest under it "
                          f"({manifest.PARTS_DIR}/ or {manifest.COMPACTED}); pass the --out folder "
                          f"of a `sctd3d run`")
    info: dict = {}
    if st.exists("run.json"):
        try:
            info = json.loads(st.read_text("run.json"))
        except ValueError as e:
            log.warning("run.json of %s is unreadable (%s); using default camera settings",
                        run_uri, e)
    return st, info


def _spec(info: dict, views: int, resolution: int, formats: tuple, random_views: int, seed: int,
          backend: Optional[str], mesh: Optional[dict] = None) -> ExportSpec:
    cfg = info.get("config") or {}
    r = cfg.get("render") or {}
    gen = cfg.get("generate") or {}
    d = ExportSpec()
    return ExportSpec(views=views, resolution=resolution, formats=formats,
                      random_views=random_views, seed=seed,
                      elevation_deg=float(r.get("elevation_deg", d.elevation_deg)),
                      radius=float(r.get("radius", d.radius)), fovy=float(r.get("fovy", d.fovy)),
                      sampler=dict(gen.get("cameras") or {}),
                      iteration=int(gen.get("iterations", 0) or 0),
                      backend=backend or r.get("backend", "auto"), mesh=dict(mesh or {}))


GPU_DEFAULT_VIEWS = (120, 512)  # views, resolution when the renders run on a GPU (gsplat)
CPU_DEFAULT_VIEWS = (24, 256)  # on CPUs (torch renderer): ~10-60 s per asset, RESULTS.md "Export"


def default_views(executor: str, info: dict) -> tuple[int, int]:
    """(views, resolution) when the user gives none: the GPU default where the renders run on a
    GPU (local: CUDA here; Ray: the run's pipeline.gpus_per_worker > 0), else the CPU default."""
    import torch

    p = (info.get("config") or {}).get("pipeline") or {}
    on_gpu = (float(p.get("gpus_per_worker", 0) or 0) > 0 if executor == "ray"
              else torch.cuda.is_available())
    return GPU_DEFAULT_VIEWS if on_gpu else CPU_DEFAULT_VIEWS


def _ply_uri(run: Storage, row: dict) -> str:
    """The run's .ply of an asset, found under the run root (so a moved run still exports)."""
    name = os.path.basename(str(row.get("asset_uri") or PLY_FILE)) or PLY_FILE
    return run.uri(asset_relpath(row["asset_id"]), name)


def _write_if_changed(st: Storage, rel: str, data: bytes) -> bool:
    """Atomic write unless the file already holds exactly `data` (re-runs keep mtimes)."""
    if st.exists(rel) and st.read_bytes(rel) == data:
        return False
    st.write_bytes(rel, data)
    return True


def _write_shard(st: Storage, name: str, samples: list, read, members: dict, depth_files,
                 depth_unit: float) -> None:
    """One atomic write per shard, streamed through a temp file (shards can be large)."""
    st.write_stream(name, lambda f: shards.write_shard(f, samples, read, members, depth_files,
                                                       depth_unit))


def _shard_bytes(res: dict) -> int:
    """An asset's bytes in a shard (its files; an export from before file_bytes: its splats)."""
    return int(res.get("file_bytes") or sum((res.get("bytes") or {}).values()) or 1)


def _executor(kind: str, address: Optional[str], num_workers: Optional[int], info: dict,
              options: dict):
    """The run's executor settings (run.json's `pipeline` section) as the registry builds them."""
    from common.config import PipelineConfig
    p = (info.get("config") or {}).get("pipeline") or {}
    pcfg = PipelineConfig(**{f.name: p[f.name] for f in dataclasses.fields(PipelineConfig) if f.name in p})
    plugins.load_plugins(pcfg.plugins)
    if kind not in executor_names():
        raise ExportError(f"--executor {kind!r} is not one of {executor_names()}")
    opts = executor_options(kind, pcfg, address=address, num_workers=num_workers, **options)
    return make_executor(kind, **opts)


def _refuse_overlap(run_uri: str, run_root: str, out: str) -> None:
    """ExportError when the dataset folder and the run overlap either way, however spelled (the
    export would replace the run's asset folders, or a compaction would delete the dataset)."""
    from common.uri_overlap import overlap

    how = overlap(out, run_uri) or overlap(out, run_root)
    if how:
        where = {"same": "is the run folder itself", "a inside b": "is inside the run folder",
                 "b inside a": "contains the run folder"}[how]
        raise ExportError(f"--out {out!r} {where} ({run_root}); choose a dataset folder outside "
                          f"the run")


def export_dataset(run_uri: str, out: str, *, where: Optional[str] = None,
                   views: Optional[int] = None, resolution: Optional[int] = None,
                   formats: str | tuple | None = None,
                   shard_size: int = 0, random_views: int = 0, seed: int = 0,
                   shard_bytes: int = shards.DEFAULT_SHARD_BYTES,
                   executor: str = "local", address: Optional[str] = None,
                   num_workers: Optional[int] = None, backend: Optional[str] = None,
                   executor_options: Optional[dict] = None,
                   mesh: Optional[dict] = None) -> ExportSummary:
    """Export the assets of `run_uri` selected by `where` into a dataset at `out` (resumable)."""
    t0 = time.perf_counter()
    try:
        fmts = fmt_registry.parse_formats(formats or fmt_registry.default_formats())
    except ValueError as e:  # an unknown format, or a plugin module that does not import
        raise ExportError(str(e)) from None
    run, info = _open_run(run_uri)
    if views is None or resolution is None:
        dv, dr = default_views(executor, info)
        views = dv if views is None else views
        resolution = dr if resolution is None else resolution
    for name, v, lo in (("--views", views, 1), ("--resolution", resolution, 8),
                        ("--shard-size", shard_size, 0), ("--random-views", random_views, 0),
                        ("--shard-bytes", shard_bytes, 1)):
        if v < lo:
            raise ExportError(f"{name} {v}: must be >= {lo}")
    if resolution > 4096:
        raise ExportError(f"--resolution {resolution}: at most 4096")
    _refuse_overlap(run_uri, run.root, out)
    table = manifest.read(run)
    expr = (where or "").strip() or DEFAULT_WHERE
    chosen = select(table, expr)
    run_counts = manifest.counts(table)
    if chosen.num_rows == 0:
        raise ExportError(f"--where {expr!r} selects no assets of the {table.num_rows} in "
                          f"{run.root} (done {run_counts['done']}, failed {run_counts['failed']}, "
                          f"rejected {run_counts['rejected']}); loosen the filter")
    try:
        fmt_registry.check(fmts)  # a missing tool is one line, before any write
    except fmt_registry.FormatUnavailable as e:
        raise ExportError(str(e)) from None
    try:  # --mesh KEY=VALUE: checked before any write (common.config.MeshConfig)
        mesh_cfg = dataclasses.asdict(mesh_config(mesh or {}))
        mesh = mesh_cfg if set(fmts) & MESH_FORMATS else {}
    except ConfigError as e:
        raise ExportError(str(e)) from None
    spec = _spec(info, views, resolution, fmts, random_views, seed, backend, mesh)
    try:
        st = open_storage(out)
        lock = RunLock(st).acquire()
    except OSError as e:
        raise StorageError(f"cannot write to the dataset root {out!r}: {e.strerror or e}; choose "
                           f"a writable --out") from e
    try:
        return _export_locked(run, info, st, chosen, table, expr, spec, (shard_bytes, shard_size),
                              executor,
                              address, num_workers, executor_options or {}, t0)
    finally:
        lock.release()


def _export_locked(run: Storage, info: dict, st: Storage, chosen, table, expr: str,
                   spec: ExportSpec, sharding: tuple, executor: str, address: Optional[str],
                   num_workers: Optional[int], ex_options: dict, t0: float) -> ExportSummary:
    rows = {r["asset_id"]: r for r in chosen.to_pylist()}
    skipped: list[dict] = []
    tasks = []
    for aid, r in sorted(rows.items()):
        if r["status"] != "done":
            skipped.append({"asset_id": aid, "prompt": r["prompt"],
                            "reason": f"status {r['status']!r}: the run has no finished asset"})
            continue
        try:
            rel = asset_relpath(aid)  # ids become paths and tar member names: hex only
        except StorageError as e:
            skipped.append({"asset_id": aid, "prompt": r["prompt"], "reason": str(e)})
            continue
        tasks.append({"asset_id": aid, "rel": rel,
                      "ply_uri": _ply_uri(run, r), "out": st.root, "prompt": r["prompt"],
                      "spec": dataclasses.asdict(spec), "plugins": plugins.plugin_specs()})
    results: dict[str, dict] = {}
    if tasks:
        ex = _executor(executor, address, num_workers, info, ex_options)
        try:
            for o in ex.map(tasks, export_asset):
                aid = o.item["asset_id"]
                if o.ok and o.value.get("ok"):
                    results[aid] = o.value
                    log.info("exported %s%s", aid, " (already done)" if o.value["reused"] else "")
                else:
                    reason = o.value["reason"] if o.ok else (o.error or "unknown error")
                    skipped.append({"asset_id": aid, "prompt": rows[aid]["prompt"],
                                    "reason": reason})
                    log.warning("skipped %s: %s", aid, reason)
        finally:
            ex.close()

    # shards: re-written only when their member list or a member's export changed
    prev = {}
    if st.exists(MARKER):
        try:
            prev = json.loads(st.read_bytes(MARKER)).get("shards") or {}
        except ValueError:
            prev = {}
    shard_bytes, max_assets = sharding
    groups = shards.plan({a: _shard_bytes(v) for a, v in results.items()}, shard_bytes, max_assets)
    shard_of: dict[str, str] = {}
    shard_members: dict[str, list] = {}
    n_reused_shards = 0
    for k, ids in enumerate(groups):
        name = shards.shard_name(k)
        members = [[a, results[a]["marker_sha256"]] for a in ids]
        shard_members[name] = members
        for a in ids:
            shard_of[a] = name
        if prev.get(name) == members and st.exists(name):
            n_reused_shards += 1
            continue
        samples = [(a, rows[a]["prompt"] or "", json.dumps(_index_row(rows[a], results[a], spec,
                                                                      name), default=str),
                    results[a]["files"]) for a in ids]
        _write_shard(st, name, samples,
                     lambda a, rel: st.read_bytes(asset_relpath(a), rel),
                     fmt_registry.member_keys(spec.formats),
                     lambda a: sorted(f for f in results[a]["files"] if f.startswith("depth/")),
                     float(results[ids[0]].get("depth_scale") or 1e-3))
        log.info("wrote %s (%d assets)", name, len(ids))
    for name in st.ls(shards.SHARDS_DIR):  # shards of an earlier, larger selection
        if f"{shards.SHARDS_DIR}/{name}" not in shard_members and name.endswith(".tar"):
            st.rm(f"{shards.SHARDS_DIR}/{name}")

    idx_rows = [_index_row(rows[a], results[a], spec, shard_of[a]) for a in results]
    idx = index.index_table(idx_rows, list(fmt_registry.index_columns(spec.formats)),
                            {r["asset_id"]: st.read_bytes(r["preview_path"]) for r in idx_rows},
                            fmt_registry.stat_columns(spec.formats))
    _write_if_changed(st, index.INDEX_FILE, index.parquet_bytes(idx))
    skipped.sort(key=lambda s: s["asset_id"])
    _write_if_changed(st, SKIPPED_FILE, json.dumps(skipped, indent=1).encode())
    _write_card(st, run, info, expr, table, chosen.num_rows, idx_rows, skipped, spec,
                len(groups), sharding)
    _write_if_changed(st, MARKER, json.dumps({
        "run": run.root, "where": expr, "spec": dataclasses.asdict(spec),
        "axes": {"world": fmt_registry.WORLD_AXES, "transforms.json": "OpenGL camera axes "
                 "(x right, y up, looking down -z) in that world",
                 **{f.name: f.axes for f in map(fmt_registry.get, spec.formats)}},
        "shard_bytes": shard_bytes, "shard_size": max_assets, "shards": shard_members},
        indent=1, sort_keys=True).encode())
    removed = prune.remove(st, prune.unlisted(st, results))  # after the index: it never names them
    return ExportSummary(removed=len(removed), out=st.root, selected=chosen.num_rows, exported=len(results),
                         reused=sum(1 for v in results.values() if v["reused"]),
                         skipped=len(skipped), shards=len(groups), shards_reused=n_reused_shards,
                         wall_s=time.perf_counter() - t0)


def _index_row(r: dict, res: dict, spec: ExportSpec, shard: str) -> dict:
    rel = asset_relpath(r["asset_id"])
    files = set(res["files"])
    return {**{k: r.get(k) for k in ("asset_id", "prompt", "seed", "method", "prior",
                                     "config_hash", "code_version", "status", *index.METRICS)},
            "num_gaussians": res.get("num_gaussians"), "num_views": res.get("num_views"),
            "num_random_views": res.get("num_random_views"), "asset_dir": rel,
            **{col: f"{rel}/{f}" if f in files else None
               for col, f in fmt_registry.index_columns(spec.formats).items()},
            "transforms_path": f"{rel}/{TRANSFORMS_FILE}",
            "preview_path": f"{rel}/{PREVIEW_FILE}" if PREVIEW_FILE in files
            else f"{rel}/images/000.png", "shard": shard,
            "ply_sha256": res.get("ply_sha256"),
            **{c: (res.get("format_stats") or {}).get(c)
               for c in fmt_registry.stat_columns(spec.formats)}}


def build_card(st: Storage, run_root: str, info: dict, expr: str, run_counts: dict,
               selected: int, idx_rows: list[dict], skipped: list[dict], spec: ExportSpec,
               n_shards: int, shard_size: int) -> dict[str, bytes]:
    """{relative path: bytes} of README.md and its plot/grid (no writes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # the package version only: a git commit elsewhere must not rewrite the card
        exporter = f"sctd3d {version('sctd3d')}"
    except PackageNotFoundError:
        exporter = "sctd3d (not installed)"
    metrics = {m: [float(r[m]) for r in idx_rows if r.get(m) is not None] for m in index.METRICS}
    ordered = sorted(idx_rows, key=lambda r: r["asset_id"])
    previews = [st.read_bytes(r["preview_path"]) for r in ordered[:card.GRID_MAX]]
    plot, grid = card.metric_plot(metrics), card.sample_grid(previews)
    cfg = info.get("config") or {}
    name = os.path.basename(st.root.rstrip("/")) or "sctd3d-dataset"
    gen = cfg.get("generate") or {}
    iterations, batch_views = int(gen.get("iterations") or 0), int(gen.get("batch_views") or 1)
    text = card.card_markdown(
        name=name, n_assets=len(idx_rows), where=expr, run_counts=run_counts, selected=selected,
        skipped=skipped, config_hashes=Counter(r["config_hash"] for r in idx_rows
                                               if r.get("config_hash")),
        code_versions=Counter(r["code_version"] for r in idx_rows if r.get("code_version")),
        deviations=card.current_deviations(list(cfg.get("deviations") or []), iterations),
        training=(f"{iterations} iterations x {batch_views} views per step "
                  "(generate.iterations, generate.batch_views of the run config)"
                  if iterations else ""),
        grid_samples=[(r["asset_id"], r.get("prompt") or "") for r in ordered[:card.GRID_MAX]],
        axes=[(f.name, f.axes) for f in map(fmt_registry.get, spec.formats) if f.axes],
        methods=Counter(r["method"] for r in idx_rows if r.get("method")), metrics=metrics,
        spec=dataclasses.asdict(spec),
        formats=[(f.name, f.card_line, list(f.files.values()))
                 for f in map(fmt_registry.get, spec.formats)], shards=n_shards,
        shard_size=shard_size, has_plot=plot is not None, has_grid=grid is not None,
        exporter_version=exporter)
    out = {README_FILE: text.encode("utf-8"), card.LICENSE_FILE: card.LICENSE_TEXT.encode()}
    if plot is not None:
        out[card.PLOT_FILE] = plot
    if grid is not None:
        out[card.GRID_FILE] = grid
    return out


def _write_card(st: Storage, run: Storage, info: dict, expr: str, table, selected: int,
                idx_rows: list[dict], skipped: list[dict], spec: ExportSpec, n_shards: int,
                shard_size: int) -> None:
    files = build_card(st, run.root, info, expr, manifest.counts(table), selected, idx_rows,
                       skipped, spec, n_shards, shard_size)
    for rel, data in files.items():
        if rel == card.LICENSE_FILE and st.exists(rel):
            continue  # the placeholder is the owner's to edit: written once, never replaced
        _write_if_changed(st, rel, data)


def export_command(run_out: str, dataset_out: Optional[str] = None, views: int = 12,
                   resolution: int = 128) -> str:
    """The `sctd3d export` line for a run (printed by `sctd3d demo`)."""
    ds = dataset_out or (run_out.rstrip("/") + "-dataset")
    return (f"sctd3d export {run_out} --out {ds} --where \"status = 'done'\" --views {views} "
            f"--resolution {resolution} --formats ply,spz")
