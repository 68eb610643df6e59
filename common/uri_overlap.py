"""Whether two storage URIs name overlapping places (one is the other, or inside it).

Why resolve first: the same folder has many spellings (`RUN`, `file://RUN`, `//RUN`, `./RUN/`, a
symlink to it, `~/RUN`), and an object-store prefix has several too (`s3://b/run`, `s3a://b//run/`).
Comparing spellings let `sctd3d export RUN --out file://RUN` overwrite the run it read. Local paths
are compared as real paths (symlinks resolved, including those of a folder that does not exist yet:
its existing parent is resolved); object stores as (protocol family, bucket/prefix segments).
"""

from __future__ import annotations

import os
from typing import Optional

# spellings of one object store (fsspec registers several protocol names for each)
_FAMILY = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "abfss": "abfs", "az": "abfs", "local": "file"}


def canonical(uri: str) -> tuple[str, tuple[str, ...]]:
    """(protocol family, path segments) of `uri`; local paths resolved to their real path."""
    proto, rest = (uri.split("://", 1) if "://" in uri else ("file", uri))
    proto = _FAMILY.get(proto.lower(), proto.lower())
    if proto == "file":
        path = os.path.expanduser(rest) or "."
        if path.startswith("//") and not path.startswith("///"):
            path = path[1:]  # POSIX leaves '//x' to the system; on Linux it is '/x'
        path = os.path.realpath(os.path.abspath(path))
        return "file", tuple(s for s in path.split("/") if s)
    return proto, tuple(s for s in rest.split("/") if s not in ("", "."))


def overlap(a: str, b: str) -> Optional[str]:
    """None when `a` and `b` are disjoint; else how they overlap: 'same', 'a inside b' or
    'b inside a'."""
    (pa, sa), (pb, sb) = canonical(a), canonical(b)
    if pa != pb:
        return None
    if sa == sb:
        return "same"
    if sa[:len(sb)] == sb:
        return "a inside b"
    if sb[:len(sa)] == sa:
        return "b inside a"
    return None
