"""What produced an asset: the code version and the peak memory of its generation.

Light to import (no torch at import time): the CLI's `--version` and the run driver use it too."""

from __future__ import annotations

import logging
import resource
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)


def code_version() -> str:
    """Package version plus the git commit (and `.dirty` with uncommitted changes) of a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("sctd3d")
    except PackageNotFoundError:  # not installed as a distribution
        v = "0+unknown"
    repo = Path(__file__).resolve().parent.parent
    if (repo / ".git").exists():
        try:
            sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "-uno"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            if sha:
                v += f"+g{sha}" + (".dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError) as e:  # no git: the version only
            log.debug("git version lookup failed: %s", e)
    return v


def peak_memory_mb(device: "torch.device") -> tuple[float, str]:
    """(peak MB, what was measured): CUDA's max allocated, else the process's max RSS."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "process_max_rss"
