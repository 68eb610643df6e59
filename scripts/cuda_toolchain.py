#!/usr/bin/env python
"""The CUDA toolchain gsplat's JIT build uses, from PyPI, and the one fix it needs to link.

NVIDIA's CUDA 13 wheels (`cuda-toolkit[nvcc,crt,cccl,cudart]`) put the compiler, headers and runtime
under `site-packages/nvidia/cu13/`, with `lib/libcudart.so.13` but no unversioned `lib/libcudart.so`.
torch's extension builder links with `-L$CUDA_HOME/lib -lcudart`, which needs the unversioned name,
so every extension (gsplat's included) compiles and then fails with `ld: cannot find -lcudart`.
`ensure_unversioned_cudart` adds `libcudart.so -> libcudart.so.13` in that lib folder (what a
system CUDA install's `-dev` package provides); the extension then records `libcudart.so.13` as its
dependency, which the same wheel provides at run time.

One home for the pin: ray_cluster.yaml's worker setup and scripts/build_gsplat.py (`make gsplat-build`)
both install TOOLCHAIN through this script.

    python scripts/cuda_toolchain.py install [--target DIR]   # pip install, fix the link, print CUDA_HOME
    python scripts/cuda_toolchain.py home [--target DIR]      # fix the link, print CUDA_HOME
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# The CUDA version must be the one torch's CUDA build names (torch 2.14.1: CUDA 13.0).
TOOLCHAIN = ("cuda-toolkit[nvcc,crt,cccl,cudart]==13.0.3.0", "ninja==1.13.2")


class ToolchainError(RuntimeError):
    """No usable CUDA toolchain where one was expected; the message says where it looked."""


def find_cuda_home(search: list[str] | None = None) -> Path:
    """The `nvidia/cu*` folder that holds `bin/nvcc`, looked for in `search` (default: sys.path)."""
    roots = search if search is not None else [p for p in sys.path if p]
    for root in roots:
        base = Path(root) / "nvidia"
        if not base.is_dir():
            continue
        for home in sorted(base.glob("cu[0-9]*"), reverse=True):
            if (home / "bin" / "nvcc").is_file():
                return home
    raise ToolchainError(f"no nvidia/cu*/bin/nvcc under {roots}; install {' '.join(TOOLCHAIN)}")


def ensure_unversioned_cudart(home: Path) -> Path:
    """Make `-lcudart` resolvable in the lib folder torch's builder passes with -L (lib64, else lib):
    link `libcudart.so` to the highest `libcudart.so.N` there. Returns the unversioned path."""
    lib = home / "lib64" if (home / "lib64").is_dir() else home / "lib"
    target = lib / "libcudart.so"
    if target.exists():
        return target
    versioned = sorted(lib.glob("libcudart.so.[0-9]*"), key=lambda p: [int(x) for x in p.name.split(".so.")[1].split(".") if x.isdigit()])
    if not versioned:
        raise ToolchainError(f"no libcudart.so.N in {lib}: the cudart extra of {TOOLCHAIN[0]} is missing")
    if target.is_symlink():  # a dangling link left by an older toolchain
        target.unlink()
    target.symlink_to(versioned[-1].name)
    return target


def install(target: Path | None = None, python: str = sys.executable) -> Path:
    """pip install TOOLCHAIN (into `python`'s environment, or into the folder `target`), fix the
    cudart link and return CUDA_HOME."""
    if target is None or not installed(target):
        cmd = [python, "-m", "pip", "install", "-q", *TOOLCHAIN]
        if target is not None:
            cmd += ["--target", str(target), "--upgrade"]  # --upgrade: replace a partial install
        subprocess.run(cmd, check=True)
    home = find_cuda_home([str(target)] if target is not None else _site_packages(python))
    ensure_unversioned_cudart(home)
    return home


def installed(target: Path) -> bool:
    """Every TOOLCHAIN pin is installed in the folder `target` (pip --target), at its version."""
    for pin in TOOLCHAIN:
        name, version = pin.split("==")
        name = name.split("[")[0].replace("-", "_")
        if not (target / f"{name}-{version}.dist-info").is_dir():
            return False
    return True


def _site_packages(python: str) -> list[str]:
    if Path(python).resolve() == Path(sys.executable).resolve():
        return [p for p in sys.path if p]
    out = subprocess.run([python, "-c", "import sys; print('\\n'.join(p for p in sys.path if p))"],
                         check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def build_env(home: Path, target: Path | None = None, arch: str | None = None) -> dict[str, str]:
    """Environment for a JIT build with this toolchain: CUDA_HOME, nvcc and ninja on PATH and,
    when given, TORCH_CUDA_ARCH_LIST (needed with no GPU to ask)."""
    env = dict(os.environ, CUDA_HOME=str(home))
    path = [str(home / "bin")] + ([str(target / "bin")] if target is not None else [])
    env["PATH"] = os.pathsep.join(path + [env.get("PATH", "")])
    if arch:
        env["TORCH_CUDA_ARCH_LIST"] = arch
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["install", "home"])
    ap.add_argument("--target", type=Path, help="install into this folder (pip --target) instead of the environment")
    args = ap.parse_args(argv)
    try:
        if args.action == "install":
            home = install(args.target)
        else:
            home = find_cuda_home([str(args.target)] if args.target else None)
            ensure_unversioned_cudart(home)
    except (ToolchainError, subprocess.CalledProcessError, OSError) as e:
        print(f"cuda_toolchain: error: {e}", file=sys.stderr)
        return 1
    print(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
