"""Point-E's downloads on a cluster node: where they go, and checked before any use.

Why not Point-E's own `fetch_file_cached`: it never checks the HTTP status (an error page is saved
as the checkpoint, and every later asset on that node fails on it), writes into the process's working
directory by default (`point_e_model_cache` under a Ray worker's cwd, once per job), and does not
verify what it cached. Here:
- every Point-E download lives under the node's project cache, `$SCTD3D_CACHE/point_e`
  (default ~/.cache/sctd3d/point_e): the two checkpoints below, and CLIP ViT-L/14 (~890 MB), which
  Point-E's text-conditioned base model loads through `clip.load(download_root=...)`; the init
  passes this folder as that root, and `clip` checks the SHA-256 its URL names;
- a checkpoint is downloaded once per node (a file lock: 8 workers of a p5 node share it) to a
  temporary name, kept only with HTTP 200 and exactly Content-Length bytes, then renamed into place
  with a record of its size and SHA-256 (`<file>.sha256.json`);
- before every use the file's size and SHA-256 are checked against that record and against
  CHECKPOINT_PINS when a pin is known; a file that fails is removed and downloaded again once.
The pins are empty: the checkpoints cannot be downloaded where this was written (no access to
openaipublic), so the first verified download of each node is the reference. Fill CHECKPOINT_PINS
from `sha256sum` of a good download to make every node check against the same value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

# openai/point-e, the commit the init is written against (its last commit, 2022-12-20)
POINT_E_COMMIT = "fc8a607c08a3ea804cc82bf1ef8628f88a3a5d2f"
# name -> (size in bytes, sha256) of the checkpoint at Point-E's MODEL_PATHS[name]; see above
CHECKPOINT_PINS: dict[str, tuple[int, str]] = {}

_CHUNK = 1 << 20
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, this process


class CheckpointError(RuntimeError):
    """A Point-E checkpoint could not be downloaded or failed its check; one line naming it."""


def point_e_cache_dir() -> Path:
    """Where Point-E's downloads are cached on this node: $SCTD3D_CACHE/point_e (default
    ~/.cache/sctd3d/point_e); never the working directory."""
    return Path(os.environ.get("SCTD3D_CACHE") or Path.home() / ".cache" / "sctd3d") / "point_e"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _check(path: Path, name: str) -> Optional[str]:
    """Why the cached `path` must not be used (None: it passed): missing record, size or SHA-256
    not the recorded / pinned one."""
    rec_path = _record_path(path)
    try:
        rec = json.loads(rec_path.read_text())
        size, sha = int(rec["size"]), str(rec["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"no valid record {rec_path.name}"
    pin = CHECKPOINT_PINS.get(name)
    if pin is not None and (size, sha) != (pin[0], pin[1]):
        return f"recorded size/sha256 {size}/{sha[:12]} is not the pinned {pin[0]}/{pin[1][:12]}"
    st = path.stat()
    if st.st_size != size:
        return f"size {st.st_size} is not the recorded {size}"
    key = (str(path), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == sha:
        return None
    actual = _sha256(path)
    if actual != sha:
        return f"sha256 {actual[:12]} is not the recorded {sha[:12]}"
    _verified[key] = sha
    return None


def _download(url: str, path: Path, name: str, timeout_s: float) -> None:
    import requests

    from common.storage import atomic_path

    try:
        with atomic_path(path) as tmp, requests.get(url, stream=True, timeout=timeout_s) as r:
            if r.status_code != 200:
                raise CheckpointError(f"Point-E checkpoint {name}: {url} answered HTTP {r.status_code} "
                                      f"{r.reason or ''}".rstrip() + "; nothing was cached")
            length = r.headers.get("content-length")
            h, n = hashlib.sha256(), 0
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
            if length is None or n != int(length):
                raise CheckpointError(f"Point-E checkpoint {name}: got {n} bytes from {url}, expected "
                                      f"{length or 'a Content-Length'}; nothing was cached")
            sha = h.hexdigest()
            pin = CHECKPOINT_PINS.get(name)
            if pin is not None and (n, sha) != (pin[0], pin[1]):
                raise CheckpointError(f"Point-E checkpoint {name} from {url} is {n} bytes, sha256 {sha}; the "
                                      f"pin (stages/point_e_weights.py CHECKPOINT_PINS) is {pin[0]} bytes, "
                                      f"{pin[1]}; nothing was cached")
            with atomic_path(_record_path(path)) as rec:  # the record first, then the file
                Path(rec).write_text(json.dumps({"url": url, "size": n, "sha256": sha}) + "\n")
    except requests.RequestException as e:
        raise CheckpointError(f"Point-E checkpoint {name}: downloading {url} failed "
                              f"({type(e).__name__}: {e}); nothing was cached") from None
    log.info("Point-E checkpoint %s: %d bytes, sha256 %s -> %s", name, n, sha, path)


def fetch_checkpoint(name: str, url: str, cache: Optional[Path] = None, timeout_s: float = 60.0) -> Path:
    """The verified local copy of Point-E checkpoint `name` (from `url`) in `cache` (default
    point_e_cache_dir()): downloaded once per node, checked (size, SHA-256) before every use; a
    cached copy that fails is removed and downloaded again once. Raises CheckpointError."""
    from filelock import FileLock

    cache = Path(cache or point_e_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / url.rsplit("/", 1)[-1]
    with FileLock(str(path) + ".lock"):
        if path.exists():
            why = _check(path, name)
            if why is None:
                return path
            log.warning("Point-E checkpoint %s at %s failed its check (%s); downloading it again",
                        name, path, why)
            path.unlink()
            _record_path(path).unlink(missing_ok=True)
        _download(url, path, name, timeout_s)
        why = _check(path, name)
        if why is not None:  # pragma: no cover - the file changed between writing and checking
            raise CheckpointError(f"Point-E checkpoint {name} at {path} failed its check right after the "
                                  f"download: {why}")
        return path


def discard(path: Path) -> None:
    """Remove a cached checkpoint (and its record) that could not be loaded, so the next use
    downloads it again instead of failing on it."""
    path.unlink(missing_ok=True)
    _record_path(path).unlink(missing_ok=True)
