"""An asset's working folder on a worker: stale temp files out, checkpoints up while it runs.

Why: on object stores an asset is produced in a local staging folder; its committed checkpoints
are uploaded while it runs so that a preempted worker's successor resumes from them. A SIGKILL
between a temp write and its rename leaves the temp file behind, which must not accumulate.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from common.storage import Storage, is_temp_name

log = logging.getLogger(__name__)


class CheckpointSync:
    """Upload an asset's committed checkpoints while it runs. Only files renamed into place are
    uploaded (never *.tmp), tensors before their JSON commit marker."""

    def __init__(self, st: Storage, local_dir: str, rel: str, every_s: float):
        self.st, self.local_dir, self.rel, self.every_s = st, Path(local_dir), rel, every_s
        self.sent: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ckpt-sync")
        if every_s > 0:
            self._thread.start()

    def sync(self) -> int:
        ck = self.local_dir / "checkpoints"
        if not ck.is_dir():
            return 0
        files = sorted((f for f in ck.iterdir() if f.is_file() and not is_temp_name(f.name)),
                       key=lambda f: (f.suffix == ".json", f.name))
        n = 0
        for f in files:
            mtime = f.stat().st_mtime
            if self.sent.get(f.name) == mtime:
                continue
            self.st.put_file(str(f), f"{self.rel}/checkpoints/{f.name}")
            self.sent[f.name] = mtime
            n += 1
        return n

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sync()
            except (OSError, FileNotFoundError) as e:  # a checkpoint rotated away mid-upload
                log.warning("checkpoint sync of %s: %s", self.rel, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


def remove_temp_files(folder: str, recursive: bool = True) -> int:
    """Delete in-progress-write leftovers ('.tmp-*', '*.tmp') of a killed process under `folder`.

    Readers never see them (temp names are hidden). Only call this where no other process can be
    writing: an asset's folder at the start of its attempt (one attempt per asset at a time), or
    the run's own folders while holding the run lock."""
    base = Path(folder)
    if not base.is_dir():
        return 0
    n = 0
    for f in (base.rglob("*") if recursive else base.iterdir()):
        if f.is_file() and is_temp_name(f.name):
            f.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("removed %d stale temp file(s) under %s", n, folder)
    return n
