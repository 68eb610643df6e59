"""Splat formats of an exported asset: the INRIA .ply (a byte copy) and SPZ for the web.

Why SPZ through PlayCanvas `splat-transform`: SPZ (Niantic's format, ~10x smaller than the .ply)
is read by current web viewers (Spark, GaussianSplats3D, Babylon.js, PlayCanvas). The maintained
implementations are Niantic's C++ library and its WebAssembly build `@adobe/spz`, which
`@playcanvas/splat-transform` (npm) uses to read and write SPZ. No maintained Python package
installs here (PyPI `spz` builds with Rust crates from the network), so the export calls the
splat-transform CLI, installed by `scripts/install_splat_tools.sh` (run by `make setup`) into
tools/splat-transform/. SPZ version 3 (gzip) is written: every viewer above reads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FORMATS = ("ply", "spz")
SPZ_VERSION = 3
TOOL_ENV = "SCTD3D_SPLAT_TRANSFORM"
TOOL_TIMEOUT_S = 600
_REPO_TOOL = (Path(__file__).resolve().parents[2] / "tools" / "splat-transform" / "node_modules"
              / ".bin" / "splat-transform")


class SplatToolError(RuntimeError):
    """splat-transform is missing or failed on an asset."""


def parse_formats(spec: str) -> tuple[str, ...]:
    """'ply,spz' -> ('ply', 'spz'); ValueError naming an unknown format."""
    out = []
    for f in (s.strip().lower() for s in spec.split(",")):
        if not f:
            continue
        if f not in FORMATS:
            raise ValueError(f"--formats: unknown format {f!r}; choose from {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise ValueError(f"--formats {spec!r} names no format; choose from {', '.join(FORMATS)}")
    return tuple(out)


def find_splat_transform() -> str | None:
    """The splat-transform executable: $SCTD3D_SPLAT_TRANSFORM, the repo's tools/ copy, or PATH."""
    env = os.environ.get(TOOL_ENV)
    if env:
        return env if os.access(env, os.X_OK) else None
    if _REPO_TOOL.exists():
        return str(_REPO_TOOL)
    return shutil.which("splat-transform")


def require_splat_transform() -> str:
    tool = find_splat_transform()
    if tool is None or shutil.which("node") is None:
        raise SplatToolError(
            "--formats spz needs PlayCanvas splat-transform (node >= 18): run "
            "scripts/install_splat_tools.sh (make setup does), set $SCTD3D_SPLAT_TRANSFORM, or "
            "export with --formats ply")
    return tool


def _convert(data: bytes, src_ext: str, dst_ext: str, extra: list[str]) -> bytes:
    tool = require_splat_transform()
    with tempfile.TemporaryDirectory(prefix="sctd3d-splat-") as tmp:
        src, dst = os.path.join(tmp, f"in.{src_ext}"), os.path.join(tmp, f"out.{dst_ext}")
        with open(src, "wb") as f:
            f.write(data)
        proc = subprocess.run([tool, "-q", "-w", *extra, src, dst], capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not os.path.exists(dst):
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise SplatToolError(f"splat-transform {src_ext} -> {dst_ext} failed "
                                 f"(exit {proc.returncode}): {msg[-1] if msg else 'no output'}")
        with open(dst, "rb") as f:
            return f.read()


def ply_to_spz(ply: bytes) -> bytes:
    """SPZ (version SPZ_VERSION) bytes of a 3DGS .ply, encoded by splat-transform."""
    return _convert(ply, "ply", "spz", ["--spz-version", str(SPZ_VERSION)])


def spz_to_ply(spz: bytes) -> bytes:
    """Decode SPZ back to a 3DGS .ply with the same tool (used to check round trips)."""
    return _convert(spz, "spz", "ply", [])
