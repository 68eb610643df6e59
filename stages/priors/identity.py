"""What a generation reads from disk, as content hashes: the prior's weights and the toy catalogue.

Why: `prior.model: toy` (or a local directory) is a name; retraining the weights behind it must
give new asset ids, or a run silently mixes assets from two priors. So an asset id hashes the
generation settings (`stages.generation_id.generation_hash`) together with the content identity
of what it reads (`stages.generation_id.generation_inputs`, asking each prior's spec):

- a local diffusers directory (the shipped toy SD dirs, `prior.model=/path/dir`): the sha256 of
  every non-hidden file under it (relative path + bytes): weights, configs, tokenizer;
- a single `.safetensors` file: its sha256 (and `prior.single_file_config`'s identity when set);
- a hub id: the commit the local Hugging Face cache resolves `prior.revision` (or `main`) to;
  when the model is not cached here the commit is unknown (None) and the id names the hub id and
  `prior.revision` only (a warning says so);
- `toy_exact` (its "weights" are the catalogue's views) and `init.method=toy_shape`: the sha256 of
  the catalogue file.

File digests are computed once per process and cached by (path, size, mtime_ns): a run hashes a
5 GB checkpoint once (about as long as reading it), later calls only stat the files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from common.config import Config

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_DIGESTS: dict[tuple[str, int, int], str] = {}   # (resolved path, size, mtime_ns) -> sha256 hex
_WARNED: set[str] = set()
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def file_digest(path: str | Path) -> str:
    """sha256 of one file's bytes, cached by (path, size, mtime_ns)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    hit = _DIGESTS.get(key)
    if hit is not None:
        return hit
    if st.st_size > (256 << 20):
        log.info("hashing %s (%.1f GB) once for the asset identity", p, st.st_size / 1e9)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def tree_digest(folder: str | Path) -> str:
    """sha256 over (relative path, file digest) of every non-hidden file under `folder`, sorted.

    Hidden entries (`.cache/`, `.gitattributes`, editor files) are skipped: the hub client keeps
    download timestamps there, which are not the model."""
    root = Path(folder).resolve()
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            f = Path(dirpath) / name
            if f.is_file():
                entries.append((f.relative_to(root).as_posix(), file_digest(f)))
    h = hashlib.sha256()
    for rel, digest in sorted(entries):
        h.update(f"{rel}\0{digest}\n".encode("utf-8"))
    return h.hexdigest()


def _hub_commit(model: str, revision: str) -> Optional[str]:
    """The commit the local Hugging Face cache resolves `revision` (empty = main) to, else None."""
    rev = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(model, "model_index.json", revision=rev)
    except ValueError as e:  # an id or revision the hub client refuses: the loader names it
        log.debug("hub cache lookup of %s@%s: %s", model, rev, e)
        return None
    if isinstance(hit, str):  # .../snapshots/<commit>/model_index.json
        return Path(hit).parent.name
    return None


def _path_identity(model: str, revision: str = "") -> dict[str, Any]:
    """Identity of a model reference: a local directory, a local file, or a hub id."""
    p = Path(model).expanduser()
    if p.is_dir():
        return {"kind": "dir", "sha256": tree_digest(p)}
    if p.is_file():
        return {"kind": "file", "sha256": file_digest(p)}
    if not _HUB_ID_RE.fullmatch(model) or ".." in model or p.suffix == ".safetensors":
        return {"kind": "missing", "path": model}  # a local path that is not there: loading says so
    commit = _hub_commit(model, revision)
    if commit is None and model not in _WARNED:
        _WARNED.add(model)
        log.warning("prior %s%s is not in the local Hugging Face cache: asset ids name the hub id and "
                    "prior.revision only; download it here (huggingface-cli download %s) so they pin "
                    "the exact commit", model, f"@{revision}" if revision else "", model)
    return {"kind": "hub", "id": model, "revision": revision or None, "commit": commit}


def catalogue_digest(catalogue: str) -> str:
    """sha256 of the toy catalogue file (empty = the shipped one), or 'missing:<path>'."""
    from stages.toyworld.catalogue import SHIPPED_CATALOGUE

    p = Path(catalogue).expanduser() if catalogue else SHIPPED_CATALOGUE
    return file_digest(p) if p.is_file() else f"missing:{p}"


def model_identity(model: str, revision: str = "", single_file_config: str = "") -> dict[str, Any]:
    """Identity of a model reference (a local directory, a local file, or a hub id at `revision`);
    a single file's `single_file_config` counts too. What the Stable Diffusion priors use."""
    ident = _path_identity(model, revision)
    if ident["kind"] == "file" and single_file_config:
        ident["single_file_config"] = _path_identity(single_file_config)
    return ident
