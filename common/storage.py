"""Output storage on any fsspec URL (local path, s3://, gs://, memory://) with atomic writes.

Why: a crash must never leave a partial file where a reader would see it, and nothing may be
written outside the run's output root. Locally a write goes to a hidden temp file in the target
folder and is renamed into place (rename is atomic on POSIX); on object stores a write is one PUT,
which is atomic by the store's own semantics. Every relative path is checked before use.
"""

from __future__ import annotations

from common.errors import UserError
import logging
import os
import posixpath
import re
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import fsspec

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
_ASSET_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")


def is_temp_name(name: str) -> bool:
    """Names of in-progress writes (ours: '.tmp-*'; the stages': '*.tmp'); never shown to readers."""
    return name.startswith(TMP_PREFIX) or name.endswith(".tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """The one local atomic write: yields a hidden temp name beside `path` for the writer to create
    (so it gets 0666 & ~umask), renames it onto `path` when the block ends without error, and
    removes it otherwise. Readers and the next run's clean-up treat the temp name as in progress.

    Why not tempfile.mkstemp: it creates 0600 files whatever the umask, so a manifest, run.json or
    frame written through it is unreadable to the other users of a shared dataset folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # ends in '.tmp', never in the target's extension: a glob such as '*.parquet' or '*.png' over
    # the folder must not see a write in progress
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class StorageError(UserError, ValueError):
    """A path that would escape the output root, or an unusable output URI."""


def _split_uri(uri: str) -> tuple[str, str]:
    """(protocol, path-without-protocol); plain paths are 'file'."""
    if "://" in uri:
        proto, rest = uri.split("://", 1)
        return proto.lower(), rest
    return "file", uri


def is_local(uri: str) -> bool:
    return _split_uri(uri)[0] in ("file", "local")


def join_uri(root: str, *parts: str) -> str:
    """Join `parts` under `root` without ever leaving it; raises StorageError on '..' or absolute parts."""
    rel = safe_relpath(*parts)
    if not rel:
        return root.rstrip("/") if root not in ("/",) else root
    return root.rstrip("/") + "/" + rel


def safe_relpath(*parts: str) -> str:
    """Normalise relative path parts; reject absolute paths, '..', NUL and backslashes."""
    pieces: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise StorageError(f"path part {part!r} is not a string")
        if "\x00" in part or "\\" in part:
            raise StorageError(f"path part {part!r} contains NUL or a backslash; use '/'-separated names")
        if part.startswith("/") or "://" in part or re.match(r"^[A-Za-z]:", part):
            raise StorageError(f"path part {part!r} is absolute; only paths relative to the output root "
                               f"are allowed")
        for seg in part.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                raise StorageError(f"path part {part!r} contains '..'; it would escape the output root")
            pieces.append(seg)
    return "/".join(pieces)


ASSETS_DIR = "assets"  # the folder of a run's (or an exported dataset's) asset folders


def asset_relpath(asset_id: str) -> str:
    """`assets/<id[:2]>/<id>`, an asset's folder relative to a run or dataset root: the one home
    of the layout (sharded so no folder holds millions of entries; ids are hex, never prompts)."""
    if not isinstance(asset_id, str) or not _ASSET_ID_RE.match(asset_id):
        raise StorageError(f"asset_id {asset_id!r} is not a lowercase hex id (8-64 chars); ids come "
                           f"from pipeline.inputs.asset_id_for, never from prompts")
    return safe_relpath(ASSETS_DIR, asset_id[:2], asset_id)


def asset_dir(out: str, asset_id: str) -> str:
    """`<out>/assets/<id[:2]>/<id>` (asset_relpath under the root URI `out`)."""
    return join_uri(out, asset_relpath(asset_id))


@dataclass
class Storage:
    """A filesystem rooted at an output URI; all paths are relative to the root."""

    root: str
    fs: fsspec.AbstractFileSystem
    root_path: str  # root as the filesystem sees it (no protocol)

    @property
    def local(self) -> bool:
        return "file" in _protocols(self.fs)

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        rel = safe_relpath(*parts)
        return self.root_path.rstrip("/") + ("/" + rel if rel else "")

    def uri(self, *parts: str) -> str:
        return join_uri(self.root, *parts)

    # ------------------------------------------------------------------ reads
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def ls(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a folder; [] if it does not exist; temp files hidden."""
        p = self.path(*parts)
        try:
            entries = self.fs.ls(p, detail=False, refresh=True) if not self.local else \
                self.fs.ls(p, detail=False)
        except FileNotFoundError:
            return []
        names = [posixpath.basename(e.rstrip("/")) for e in entries]
        return sorted(n for n in names if n and not is_temp_name(n))

    def walk_files(self, *parts: str) -> Iterator[str]:
        """Relative paths (to the root) of all files under a folder, temp files excluded."""
        base = self.path(*parts)
        if not self.fs.exists(base):
            return
        for p in sorted(self.fs.find(base)):
            if is_temp_name(posixpath.basename(p)):
                continue
            yield posixpath.relpath(p, self.root_path.rstrip("/") or "/")

    # ------------------------------------------------------------------ writes
    def write_bytes(self, rel: str, data: bytes) -> str:
        """Atomically write `data` at `rel`; returns the full URI."""
        if self.local:
            return self.write_stream(rel, lambda f: f.write(data))
        # Object stores: one PUT is atomic (readers see the old object or the new one).
        self.fs.pipe_file(self.path(rel), data)
        return self.uri(rel)

    def write_stream(self, rel: str, write: Callable[[BinaryIO], object]) -> str:
        """Atomically write at `rel` whatever `write(f)` writes into a binary file; returns the URI.

        Why: large outputs (dataset shards) are streamed, never held in memory. Locally through a
        temp file in the target folder and one rename; on object stores through a local temp file
        and one upload. If `write` raises, nothing is left behind."""
        target = self.path(rel)
        if not self.local:
            with tempfile.NamedTemporaryFile(prefix="sctd3d-upload-") as f:
                write(f)
                f.flush()
                self.fs.put_file(f.name, target)
            return self.uri(rel)
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # durable before the rename: a record is committed last
        return self.uri(rel)

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def put_file(self, local_file: str, rel: str) -> str:
        """Upload (or copy) one local file atomically."""
        target = self.path(rel)
        if self.local:
            with open(local_file, "rb") as f:
                return self.write_bytes(rel, f.read())
        self.fs.put_file(local_file, target)
        return self.uri(rel)

    def put_dir(self, local_dir: str, rel: str) -> list[str]:
        """Upload every file under `local_dir` to `rel`, one atomic write each; returns URIs."""
        out = []
        base = Path(local_dir)
        for f in sorted(base.rglob("*")):
            if f.is_file() and not is_temp_name(f.name):
                sub = f.relative_to(base).as_posix()
                out.append(self.put_file(str(f), posixpath.join(rel, sub)))
        return out

    def get_dir(self, rel: str, local_dir: str) -> int:
        """Download every file under `rel` into `local_dir` (for resuming from remote checkpoints)."""
        n = 0
        base = self.path(rel)
        if not self.fs.exists(base):
            return 0
        for p in self.fs.find(base):
            if is_temp_name(posixpath.basename(p)):
                continue
            sub = posixpath.relpath(p, base)
            safe_relpath(sub)
            dst = Path(local_dir) / sub
            dst.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(p, str(dst))
            n += 1
        return n

    def rm(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p)

    def makedirs(self, rel: str = "") -> None:
        if self.local:
            os.makedirs(self.path(rel), exist_ok=True)

    def orphan_temp_files(self) -> list[str]:
        """Temp files left by writes interrupted mid-way (local only; object stores have none)."""
        if not self.local or not self.fs.exists(self.root_path):
            return []
        return sorted(p for p in self.fs.find(self.root_path)
                      if is_temp_name(posixpath.basename(p)))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def open_storage(uri: str, **storage_options) -> Storage:
    """A Storage rooted at `uri`; local roots are made absolute (and created)."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"output URI {uri!r} is empty; pass a folder or s3://bucket/prefix")
    proto, rest = _split_uri(uri)
    if proto in ("file", "local"):
        root = os.path.abspath(os.path.expanduser(rest))
        fs = fsspec.filesystem("file")
        os.makedirs(root, exist_ok=True)
        return Storage(root=root, fs=fs, root_path=root)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    except (ImportError, ValueError) as e:
        raise StorageError(f"cannot open output URI {uri!r}: {e} (for s3:// install s3fs, for gs:// "
                           f"gcsfs)") from None
    return Storage(root=uri.rstrip("/"), fs=fs, root_path=path.rstrip("/"))


def set_storage_options(uri: str, options: dict) -> None:
    """Make `options` (fsspec keyword arguments, e.g. endpoint_url, profile, key/secret) the default
    for `uri`'s protocol in this process, so every reader and writer of the run (manifest, report,
    FID, workers) opens the store the same way. Local paths take no options."""
    proto = _split_uri(uri)[0]
    if proto in ("file", "local") or not options:
        return
    conf = fsspec.config.conf.setdefault(proto, {})
    for k, v in options.items():
        if isinstance(v, dict) and isinstance(conf.get(k), dict):
            conf[k] = {**conf[k], **v}
        else:
            conf[k] = v
