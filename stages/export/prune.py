"""Asset folders of a dataset that its index no longer lists, and their removal.

Why: a re-export with a narrower `--where` (or an asset skipped this time) writes an index, shards
and card without some assets; their folders from the earlier export must go too, or `assets/`
disagrees with everything else. Called after the new index is written, so the index never names a
removed folder, and a crash in between only leaves folders the next export removes. Locally each
folder is renamed to a hidden temp name first (one atomic step; readers and the next export treat
it as in progress) and then deleted; on object stores the folder's `export.json` marker (what makes
it complete) goes first, then its files.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from typing import Iterable

from common.storage import ASSETS_DIR, Storage, StorageError, asset_relpath

log = logging.getLogger(__name__)

MARKER = "export.json"


def unlisted(st: Storage, keep: Iterable[str]) -> list[str]:
    """Ids of asset folders under `assets/<id[:2]>/<id>` that are not in `keep`, sorted."""
    keep = set(keep)
    out = []
    for shard in st.ls(ASSETS_DIR):
        for aid in st.ls(ASSETS_DIR, shard):
            try:  # only folders an export made: hex ids under their own prefix
                made = asset_relpath(aid) == f"{ASSETS_DIR}/{shard}/{aid}"
            except StorageError:
                continue
            if made and aid not in keep:
                out.append(aid)
    return sorted(out)


def remove(st: Storage, asset_ids: Iterable[str]) -> list[str]:
    """Remove the folders of `asset_ids`; returns the ids removed."""
    done = []
    for aid in asset_ids:
        rel = asset_relpath(aid)
        if st.local:
            final = st.path(rel)
            if os.path.islink(final):  # never follow a link out of the dataset: drop the link only
                os.unlink(final)
            elif os.path.isdir(final):
                gone = os.path.join(os.path.dirname(final), f".tmp-{aid}-{uuid.uuid4().hex[:8]}")
                os.replace(final, gone)
                shutil.rmtree(gone)
            else:
                continue
        else:
            st.rm(f"{rel}/{MARKER}")
            for f in list(st.walk_files(rel)):
                st.rm(f)
        done.append(aid)
    if done:
        log.info("removed %d asset folder(s) no longer selected: %s%s", len(done),
                 ", ".join(done[:10]), " ..." if len(done) > 10 else "")
    return done
