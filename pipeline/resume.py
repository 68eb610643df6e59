"""What a (re-)run does: which requests still need running, and this input's rejected rows.

Why its own module: resuming is the run's contract with its output root (a committed `done`
asset is skipped, a failed one retried per `--redo`, a `done` record whose files are gone redone;
a row fixed in the input no longer shows as rejected), independent of how assets are executed.
"""

from __future__ import annotations

import hashlib
import logging
import os

from common import manifest
from pipeline.inputs import AssetRequest
from pipeline.records import commit_many
from common.storage import Storage, is_local

log = logging.getLogger(__name__)

REDO_CHOICES = ("failed", "missing", "all")


def select_todo(st: Storage, requests: list[AssetRequest], existing: dict[str, dict],
                redo: str = "failed") -> list[AssetRequest]:
    """The requests to run: `failed` (default) = no record, a failed record, or a `done` record
    whose files are gone; `missing` = the same without retrying failed ones; `all` = every request.

    Why verify: a `done` record whose asset.ply was deleted used to be skipped as done forever. The
    check is one existence test per recorded file of a done asset (threaded on object stores)."""
    if redo == "all":
        return list(requests)
    done = [r for r in requests if (existing.get(r.asset_id) or {}).get("status") == "done"]
    gone = {r.asset_id for r, ok in zip(done, files_present(st, [existing[r.asset_id] for r in done]))
            if not ok}
    for aid in sorted(gone):
        log.warning("asset %s is recorded done but its files are gone (%s); redoing it", aid,
                    existing[aid].get("asset_uri"))
    keep_failed = redo == "missing"
    todo = []
    for r in requests:
        status = (existing.get(r.asset_id) or {}).get("status")
        if status == "done" and r.asset_id not in gone:
            continue
        if status == "failed" and keep_failed:
            continue
        todo.append(r)
    return todo


def files_present(st: Storage, records: list[dict]) -> list[bool]:
    """Per done record: do its recorded files (asset, video, sheet) still exist?"""
    import fsspec

    prefix = st.root.rstrip("/") + "/"

    def exists(uri: str) -> bool:
        if uri.startswith(prefix):
            return st.exists(uri[len(prefix):])
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.exists(path)

    def present(rec: dict) -> bool:
        return all(exists(u) for u in (rec.get("asset_uri"), rec.get("video_uri"), rec.get("sheet_uri"))
                   if isinstance(u, str) and u)
    if st.local or len(records) < 8:
        return [present(r) for r in records]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(present, records))


def input_key(prompts_uri: str) -> str:
    """The prompt file's identity in the manifest's `input_uri` (local paths made absolute)."""
    if is_local(prompts_uri):
        return os.path.abspath(os.path.expanduser(prompts_uri.split("://", 1)[-1]))
    return prompts_uri


def commit_rejects(st: Storage, prompts_uri: str, records: list[dict],
                   existing: dict[str, dict]) -> None:
    """One rejected part per prompt file, replaced by each run: a row fixed in the input no longer
    shows as rejected. Rejects of this input that the compacted manifest still holds are dropped
    by a compaction (we hold the run lock); rejects of other inputs are kept."""
    key = input_key(prompts_uri)
    name = "rejected-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    for r in records:  # the same bad row in two prompt files: two records, one per file
        r["asset_id"] = "r" + hashlib.sha256(f"{key}\0{r['asset_id']}".encode()).hexdigest()[:19]
    if records:
        commit_many(st, records, name)  # pipeline.records: the one writer of records
    else:
        st.rm(f"{manifest.PARTS_DIR}/{name}.parquet")
    current = {r["asset_id"] for r in records}
    stale = {aid for aid, r in existing.items() if r.get("status") == "rejected"
             and r.get("input_uri") == key and aid not in current}
    if stale:
        log.info("%d rejected record(s) of %s superseded by the fixed input", len(stale), key)
        if st.exists(manifest.COMPACTED):
            manifest.compact_locked(st, drop_ids=stale)
        for aid in stale:
            existing.pop(aid, None)
