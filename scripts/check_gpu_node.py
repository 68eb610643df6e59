#!/usr/bin/env python
"""Setup check of a GPU worker node (ray_cluster.yaml `worker_setup_commands`): fail the node loudly
when it cannot run the pinned torch on its GPU, and build gsplat's CUDA extension once, here,
instead of inside the first asset's timeout.

Exit 1 (one line on stderr, the node's setup fails and `ray up` / the autoscaler log shows it) when:
  - torch is a CPU build, or no NVIDIA driver answers (`nvidia-smi`);
  - the driver is older than the one torch's CUDA build needs (CUDA 13.x: >= 580, 12.x: >= 525);
  - `torch.cuda.is_available()` is False anyway.
gsplat: a tiny rasterization on the GPU triggers the JIT build (cached under
~/.cache/torch_extensions for every later process on the node). Before it, the unversioned
`libcudart.so` is added to $CUDA_HOME's lib folder when missing (the PyPI toolchain ships only
`libcudart.so.13`; torch's builder links `-lcudart`; scripts/cuda_toolchain.py). A failed build
prints a WARNING and exits 0 (renders fall back to the torch renderer, tens of times slower; each
asset records the renderer it used), unless --require-gsplat (ray_cluster.yaml): then it fails the node.

    python scripts/check_gpu_node.py [--require-gsplat] [--skip-gsplat]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

# Minimum Linux driver per CUDA major version (NVIDIA's CUDA compatibility table; minor-version
# compatibility within a major version).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}


class NodeCheckError(RuntimeError):
    """This node cannot run the pinned torch on its GPU; the message says why and what to change."""


def driver_version() -> str | None:
    """The NVIDIA driver version `nvidia-smi` reports for GPU 0, or None when there is no driver."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    return lines[0] if r.returncode == 0 and lines else None


def required_driver(torch_cuda: str) -> int:
    major = int(torch_cuda.split(".")[0])
    if major not in MIN_DRIVER:
        raise NodeCheckError(f"torch is built for CUDA {torch_cuda}, which this check does not know; "
                             f"add its minimum driver to MIN_DRIVER in {__file__}")
    return MIN_DRIVER[major]


def check_driver_and_torch() -> str:
    """Raise NodeCheckError unless this node can run the pinned torch on its GPU; returns a summary."""
    import torch

    cuda = torch.version.cuda
    if not cuda:
        raise NodeCheckError(f"torch {torch.__version__} is a CPU build; GPU workers need the CUDA build "
                             "pinned in pyproject.toml")
    need = required_driver(cuda)
    found = driver_version()
    if found is None:
        raise NodeCheckError(f"no NVIDIA driver answers (nvidia-smi missing or failing); torch "
                             f"{torch.__version__} (CUDA {cuda}) needs driver >= {need}: use a GPU instance "
                             "and the machine image named in ray_cluster.yaml (ImageId)")
    if int(found.split(".")[0]) < need:
        raise NodeCheckError(f"NVIDIA driver {found} is older than {need}, which torch {torch.__version__} "
                             f"(CUDA {cuda}) needs; use a machine image with driver >= {need} "
                             "(ray_cluster.yaml: ImageId)")
    if not torch.cuda.is_available():
        raise NodeCheckError(f"torch.cuda.is_available() is False with driver {found} and torch "
                             f"{torch.__version__} (CUDA {cuda}); check that the container runs with the "
                             "NVIDIA runtime (docker --gpus / nvidia-container-toolkit on the image)")
    return f"driver {found} >= {need} for torch {torch.__version__} (CUDA {cuda}), GPU {torch.cuda.get_device_name(0)}"


def prepare_toolchain() -> str:
    """Make $CUDA_HOME's runtime linkable by name (`-lcudart`) when CUDA_HOME is set; returns what
    was done. Raises cuda_toolchain.ToolchainError when that folder has no libcudart.so.N."""
    home = os.environ.get("CUDA_HOME")
    if not home:
        return "CUDA_HOME not set"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import cuda_toolchain
    finally:
        sys.path.pop(0)
    return f"links {cuda_toolchain.ensure_unversioned_cudart(Path(home))}"


def build_gsplat(device: str = "cuda") -> float:
    """Import gsplat and rasterize two Gaussians on `device` (the first call JIT-builds the CUDA
    extension); returns the seconds it took. Raises whatever gsplat raises."""
    import torch
    from gsplat import rasterization

    t0 = time.perf_counter()
    dev = torch.device(device)
    means = torch.tensor([[0.0, 0.0, 3.0], [0.2, 0.1, 3.5]], device=dev)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2, device=dev)
    scales = torch.full((2, 3), 0.1, device=dev)
    opac = torch.full((2,), 0.8, device=dev)
    colors = torch.rand(2, 3, device=dev)
    K = torch.tensor([[[20.0, 0.0, 8.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]]], device=dev)
    img, _, _ = rasterization(means, quats, scales, opac, colors, torch.eye(4, device=dev)[None], K, 16, 16)
    if not torch.isfinite(img).all() or img.abs().sum() == 0:
        raise RuntimeError("gsplat rendered an empty or non-finite test image")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--require-gsplat", action="store_true", help="a failed gsplat build fails the node too")
    ap.add_argument("--skip-gsplat", action="store_true", help="driver and torch checks only")
    args = ap.parse_args(argv)
    try:
        summary = check_driver_and_torch()
    except NodeCheckError as e:
        print(f"check_gpu_node: error: {e}", file=sys.stderr)
        return 1
    print(f"check_gpu_node: ok: {summary}")
    if args.skip_gsplat:
        return 0
    try:
        prepare_toolchain()
        s = build_gsplat()
    except Exception as e:  # noqa: BLE001 - any build/import failure means "no gsplat on this node"
        msg = f"gsplat CUDA extension unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        if args.require_gsplat:
            print(f"check_gpu_node: error: {msg}", file=sys.stderr)
            return 1
        print(f"check_gpu_node: WARNING: {msg}; renders on this node fall back to the torch renderer",
              file=sys.stderr)
        return 0
    print(f"check_gpu_node: ok: gsplat CUDA extension built/loaded and rasterized in {s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
