"""A run lock on an output root: one writer at a time, stale locks recoverable.

Why: two `sctd3d run` commands on the same output root would generate the same assets twice and
race on their checkpoints. We chose "the second run refuses" over cooperation: it is simple to
reason about and to test. The lock file `run.lock` names its owner (host, pid, run id) and is
refreshed by a heartbeat; a lock whose owner process is gone (same host) or whose heartbeat is
older than `stale_after_s` is stale and is taken over with a warning.

Locally the lock is created with O_CREAT|O_EXCL (atomic). Object stores have no portable
create-if-absent through fsspec, so there the lock is written and read back (best effort: two
drivers starting within the same second on one bucket could both proceed; the manifest stays
correct because records are per-asset and idempotent).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

from common.storage import Storage

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class LockHeld(RuntimeError):
    """Another live run owns the output root."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, storage: Storage, stale_after_s: float = 900.0, heartbeat_s: float = 30.0):
        self.st = storage
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.held = False

    # ---------------------------------------------------------------- state
    def _body(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "token": self.token,
                           "started_at": self.started_at, "heartbeat_at": time.time()}).encode()

    def read_owner(self) -> Optional[dict]:
        if not self.st.exists(LOCK_NAME):
            return None
        try:
            return json.loads(self.st.read_bytes(LOCK_NAME))
        except (ValueError, FileNotFoundError):
            return {"host": "?", "pid": -1, "token": "", "started_at": 0, "heartbeat_at": 0}

    def stale_reason(self, owner: dict) -> Optional[str]:
        """Why `owner`'s lock may be taken over, or None if it looks alive."""
        age = time.time() - float(owner.get("heartbeat_at") or 0)
        if owner.get("host") == self.host and isinstance(owner.get("pid"), int) \
                and owner["pid"] > 0 and not _pid_alive(owner["pid"]):
            return f"owner pid {owner['pid']} on this host is not running"
        if age > self.stale_after_s:
            return f"last heartbeat {age:.0f} s ago (> {self.stale_after_s:.0f} s)"
        return None

    # ---------------------------------------------------------------- acquire/release
    def _create_exclusive(self) -> bool:
        if self.st.local:
            path = self.st.path(LOCK_NAME)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._body())
            return True
        if self.st.exists(LOCK_NAME):
            return False
        self.st.write_bytes(LOCK_NAME, self._body())
        return True

    def acquire(self) -> "RunLock":
        for _ in range(3):
            if self._create_exclusive():
                break
            owner = self.read_owner()
            if owner is None:
                continue  # released between our two looks
            reason = self.stale_reason(owner)
            if reason is None:
                age = time.time() - float(owner.get("started_at") or 0)
                beat = time.time() - float(owner.get("heartbeat_at") or 0)
                raise LockHeld(
                    f"output root {self.st.root} is in use by another run: host {owner.get('host')} "
                    f"pid {owner.get('pid')}, started {age:.0f} s ago, last heartbeat {beat:.0f} s "
                    f"ago. Wait for it to finish, or choose another --out. If that run is dead, the "
                    f"lock becomes stale after {self.stale_after_s:.0f} s without a heartbeat (or "
                    f"delete {self.st.uri(LOCK_NAME)} yourself).")
            log.warning("taking over stale run lock at %s (%s; owner host %s pid %s)",
                        self.st.uri(LOCK_NAME), reason, owner.get("host"), owner.get("pid"))
            self.st.write_bytes(LOCK_NAME, self._body())
            break
        else:
            raise LockHeld(f"could not acquire {self.st.uri(LOCK_NAME)} after 3 tries")
        owner = self.read_owner()
        if not owner or owner.get("token") != self.token:
            raise LockHeld(f"lost the race for {self.st.uri(LOCK_NAME)} to host "
                           f"{(owner or {}).get('host')} pid {(owner or {}).get('pid')}; retry later")
        self.held = True
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            owner = self.read_owner()
            if not owner or owner.get("token") != self.token:
                log.error("run lock %s was taken over by host %s pid %s",
                          self.st.uri(LOCK_NAME), (owner or {}).get("host"), (owner or {}).get("pid"))
                return
            self.st.write_bytes(LOCK_NAME, self._body())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            owner = self.read_owner()
            if owner and owner.get("token") == self.token:
                self.st.rm(LOCK_NAME)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
