"""A run lock on an output root: one writer at a time, stale locks recoverable.

Why: two `sctd3d run` commands on the same output root would generate the same assets twice and
race on their checkpoints. We chose "the second run refuses" over cooperation: it is simple to
reason about and to test. The lock file `run.lock` names its owner (host, pid, run id) and is
refreshed by a heartbeat; a lock whose owner process is gone (same host) or whose heartbeat is
older than `stale_after_s` is stale and is taken over with a warning.

Every read-decide-write of `run.lock` (create, stale takeover, heartbeat, release) runs inside an
exclusive `flock` of a guard file, `run.lock.guard` (local roots). So a takeover is atomic: of many
processes finding the same dead owner, the first one under the guard re-reads the lock, finds it
still stale and replaces it; every later one re-reads it, finds a live owner and refuses. The
kernel drops a flock when its holder dies, so the guard itself can never go stale; the guard file
is unlinked by its holder (a waiter re-checks that the file it locked is still the one at the path).

A heartbeat that finds the lock no longer names it (someone judged it stale and took it over, e.g.
after the machine was suspended longer than `stale_after_s`) logs one line and stops the run
(`common.deadline.request_stop`, as a first Ctrl-C does): no new asset starts.

Object stores have no flock and no portable create-if-absent through fsspec, so there the lock is
written and read back (best effort: two drivers starting within the same second on one bucket
could both proceed; the losing heartbeat stops its run, and the manifest stays correct because
records are per-asset and idempotent).
"""

from __future__ import annotations

from common.errors import UserError
import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Iterator, Optional

from common import deadline
from common.storage import Storage

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
GUARD_NAME = "run.lock.guard"
GUARD_WAIT_S = 60.0      # a guard holder does a few small file operations; this only bounds a stall
LOST_LOCK = "lost the run lock"  # the stop reason's prefix when a heartbeat finds the lock taken over


class LockHeld(UserError, RuntimeError):
    """Another live run owns the output root."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _flock_guard(path: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed) for the block; unlink it at the end.

    The inode check makes unlinking safe: a waiter that locked a file which its holder unlinked
    meanwhile sees another (or no) file at `path` and starts over."""
    give_up = time.monotonic() + GUARD_WAIT_S
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > give_up:
                        raise LockHeld(f"{path} stayed locked for {GUARD_WAIT_S:.0f} s (another "
                                       f"process is stuck acquiring or releasing the run lock); "
                                       f"retry later") from None
                    time.sleep(0.002)
            try:
                now, held = os.stat(path), os.fstat(fd)
                same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)  # closing drops the flock


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
        self.lost = ""  # why the heartbeat found the lock no longer ours ('' while it is)

    # ---------------------------------------------------------------- state
    def _body(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "token": self.token,
                           "started_at": self.started_at, "heartbeat_at": time.time()}).encode()

    def read_owner(self) -> Optional[dict]:
        try:
            data = self.st.read_bytes(LOCK_NAME)
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            owner = None
        if not isinstance(owner, dict):
            return {"host": "?", "pid": -1, "token": "", "started_at": 0, "heartbeat_at": 0}
        return owner

    def stale_reason(self, owner: dict) -> Optional[str]:
        """Why `owner`'s lock may be taken over, or None if it looks alive."""
        try:
            age = time.time() - float(owner.get("heartbeat_at") or 0)
        except (TypeError, ValueError):
            age = float("inf")
        if owner.get("host") == self.host and isinstance(owner.get("pid"), int) \
                and owner["pid"] > 0 and not _pid_alive(owner["pid"]):
            return f"owner pid {owner['pid']} on this host is not running"
        if age > self.stale_after_s:
            return f"last heartbeat {age:.0f} s ago (> {self.stale_after_s:.0f} s)"
        return None

    # ---------------------------------------------------------------- acquire/release
    def _guard(self) -> "contextlib.AbstractContextManager[None]":
        """Serialises every read-decide-write of run.lock among processes (local roots)."""
        if not self.st.local:
            return contextlib.nullcontext()
        self.st.makedirs()
        return _flock_guard(self.st.path(GUARD_NAME))

    def _held_error(self, owner: dict) -> LockHeld:
        now = time.time()
        try:
            age = now - float(owner.get("started_at") or 0)
            beat = now - float(owner.get("heartbeat_at") or 0)
        except (TypeError, ValueError):
            age = beat = float("nan")
        return LockHeld(
            f"output root {self.st.root} is in use by another run: host {owner.get('host')} "
            f"pid {owner.get('pid')}, started {age:.0f} s ago, last heartbeat {beat:.0f} s "
            f"ago. Wait for it to finish, or choose another --out. If that run is dead, the "
            f"lock becomes stale after {self.stale_after_s:.0f} s without a heartbeat (or "
            f"delete {self.st.uri(LOCK_NAME)} yourself).")

    def acquire(self) -> "RunLock":
        with self._guard():
            owner = self.read_owner()
            if owner is not None:
                reason = self.stale_reason(owner)
                if reason is None:
                    raise self._held_error(owner)
                log.warning("taking over stale run lock at %s (%s; owner host %s pid %s)",
                            self.st.uri(LOCK_NAME), reason, owner.get("host"), owner.get("pid"))
            self.st.write_bytes(LOCK_NAME, self._body())  # atomic replace, under the guard
            owner = self.read_owner()  # object stores: another driver may have written meanwhile
        if not owner or owner.get("token") != self.token:
            raise LockHeld(f"lost the race for {self.st.uri(LOCK_NAME)} to host "
                           f"{(owner or {}).get('host')} pid {(owner or {}).get('pid')}; retry later")
        self.held = True
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def refresh(self) -> bool:
        """One heartbeat: rewrite the lock if it still names us (True), else stop the run (False)."""
        with self._guard():
            owner = self.read_owner()
            if owner is not None and owner.get("token") == self.token:
                self.st.write_bytes(LOCK_NAME, self._body())
                return True
        self.held = False
        self.lost = (f"{LOST_LOCK} {self.st.uri(LOCK_NAME)}: it now names host "
                     f"{(owner or {}).get('host')} pid {(owner or {}).get('pid')}" if owner else
                     f"{LOST_LOCK} {self.st.uri(LOCK_NAME)}: it was deleted")
        log.error("%s; stopping this run (no new asset starts; re-run the same command once the "
                  "other run has finished)", self.lost)
        deadline.request_stop(self.lost)
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.refresh():
                    return
            except (OSError, LockHeld) as e:  # a full disk or a stuck guard: try again next beat
                log.warning("run lock heartbeat on %s failed (%s); retrying in %.0f s",
                            self.st.uri(LOCK_NAME), e, self.heartbeat_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.held:
            with self._guard():
                owner = self.read_owner()
                if owner and owner.get("token") == self.token:
                    self.st.rm(LOCK_NAME)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
