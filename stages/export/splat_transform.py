"""PlayCanvas `splat-transform` (npm), the converter behind the SPZ, SOG and HTML-viewer formats.

Why this tool: it is the maintained converter of the web-splat ecosystem (PlayCanvas, SuperSplat);
it reads and writes SPZ through Niantic's own WebAssembly build (`@adobe/spz`) and writes SOG and
SuperSplat's self-contained viewer. No maintained Python package installs here (PyPI `spz` builds
Rust crates from the network), so the export calls the CLI, installed by
`scripts/install_splat_tools.sh` (run by `make setup`) into tools/splat-transform/.

Axes: splat-transform assumes a `.ply` is in the 3DGS / COLMAP convention (RDF: x right, y down,
z forward) and converts to each format's own convention from there (SPZ: RUB). sctd3d's `.ply` is
y-up (RUB), so every conversion first rotates 180 degrees about x (`-r 180,0,0`): the tool then
sees the RDF scene it expects, and the SPZ it writes holds sctd3d's coordinates unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from stages.export.formats.base import FormatUnavailable

TOOL_ENV = "SCTD3D_SPLAT_TRANSFORM"
TOOL_TIMEOUT_S = 600
Y_UP_TO_RDF = ["-r", "180,0,0"]  # sctd3d's y-up .ply -> the RDF .ply splat-transform assumes
_REPO_TOOL = (Path(__file__).resolve().parents[2] / "tools" / "splat-transform" / "node_modules"
              / ".bin" / "splat-transform")


class SplatToolError(FormatUnavailable):
    """splat-transform is missing or failed on an asset."""


def find_splat_transform() -> str | None:
    """The splat-transform executable: $SCTD3D_SPLAT_TRANSFORM, the repo's tools/ copy, or PATH."""
    env = os.environ.get(TOOL_ENV)
    if env:
        return env if os.access(env, os.X_OK) else None
    if _REPO_TOOL.exists():
        return str(_REPO_TOOL)
    return shutil.which("splat-transform")


def require_splat_transform(fmt: str = "spz") -> str:
    tool = find_splat_transform()
    if tool is None or shutil.which("node") is None:
        raise SplatToolError(
            f"--formats {fmt} needs PlayCanvas splat-transform (node >= 18): run "
            "scripts/install_splat_tools.sh (make setup does), set $SCTD3D_SPLAT_TRANSFORM, or "
            "export with --formats ply")
    return tool


def convert(data: bytes, src_ext: str, dst_ext: str, in_actions: list[str] | None = None,
            options: list[str] | None = None, fmt: str = "spz") -> bytes:
    """`data` (a .src_ext file) converted to .dst_ext; `in_actions` apply to the input."""
    tool = require_splat_transform(fmt)
    with tempfile.TemporaryDirectory(prefix="sctd3d-splat-") as tmp:
        src, dst = os.path.join(tmp, f"in.{src_ext}"), os.path.join(tmp, f"out.{dst_ext}")
        with open(src, "wb") as f:
            f.write(data)
        cmd = [tool, "-q", "-w", *(options or []), src, *(in_actions or []), dst]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, cwd=tmp)
        if proc.returncode != 0 or not os.path.exists(dst):
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise SplatToolError(f"splat-transform {src_ext} -> {dst_ext} failed "
                                 f"(exit {proc.returncode}): {msg[-1] if msg else 'no output'}")
        with open(dst, "rb") as f:
            return f.read()


def from_y_up_ply(ply: bytes, dst_ext: str, options: list[str] | None = None,
                  fmt: str = "spz") -> bytes:
    """sctd3d's y-up .ply converted to .dst_ext in that format's own axis convention."""
    return convert(ply, "ply", dst_ext, Y_UP_TO_RDF, options, fmt)


def spz_to_ply(spz: bytes) -> bytes:
    """Decode SPZ back to a .ply with the same tool (RDF axes: y and z negated vs sctd3d's)."""
    return convert(spz, "spz", "ply")
