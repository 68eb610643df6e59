#!/usr/bin/env python
"""Build gsplat's CUDA extension here, with no GPU, exactly as a GPU node's setup does (`make gsplat-build`).

Installs the pinned CUDA toolchain from PyPI (scripts/cuda_toolchain.py: TOOLCHAIN) into its own folder
(`--dir`/toolchain, never into the project's venv), adds the unversioned `libcudart.so` its lib folder
lacks, then (from scratch: an earlier build in `--dir` is removed) imports `gsplat.cuda._backend` with CUDA_HOME, TORCH_CUDA_ARCH_LIST (default 9.0: H100/H200)
and TORCH_EXTENSIONS_DIR set: gsplat's own JIT build compiles and links every `.cu` file. Checks the
result (the module loads; it needs libcudart.so.13 and carries code for the requested architecture),
prints the build time and writes it to `--dir`/gsplat-build.json.

    python scripts/build_gsplat.py [--dir build/gsplat] [--arch 9.0] [--jobs 2] [--fast]

Exit 0 when built and checked, 1 (one line on stderr, the log's tail above it) otherwise. The
interpreter running this must have the project's torch and gsplat (`make setup`'s .venv).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cuda_toolchain  # noqa: E402  (a sibling script)

# Runs in the child: gsplat's own JIT path (the one a node takes on first import), then report.
_CHILD = r"""
import sys
from gsplat.cuda._backend import _C
if _C is None:
    sys.exit("gsplat: no CUDA toolkit found (CUDA_HOME not used?)")
open(sys.argv[1], "w").write(_C.__file__)
"""


def _needed_libs(so: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    return [ln.split("[", 1)[1].rstrip("]") for ln in out.splitlines() if "(NEEDED)" in ln]


def _archs(build_ninja: Path) -> list[str]:
    """The GPU code every .cu file was compiled to: the `-gencode=arch=...,code=...` flags in the
    build file torch's builder wrote (the PyPI toolchain has no cuobjdump to read the binary)."""
    text = build_ninja.read_text() if build_ninja.is_file() else ""
    return sorted(set(re.findall(r"arch=compute_\w+,code=(\w+)", text)))


def build(out_dir: Path, arch: str, jobs: int, fast: bool = False) -> dict:
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "toolchain"
    t0 = time.perf_counter()
    home = cuda_toolchain.install(target)
    t_install = time.perf_counter() - t0
    env = cuda_toolchain.build_env(home, target, arch)
    ext_dir = out_dir / "torch_extensions"
    env.update(TORCH_EXTENSIONS_DIR=str(ext_dir), MAX_JOBS=str(jobs), VERBOSE="1")
    if fast:
        env["FAST_COMPILE"] = "1"  # -O0: only to test this script, never for a node
    shutil.rmtree(ext_dir / "gsplat_cuda", ignore_errors=True)  # time a build from scratch
    log = out_dir / "build.log"
    t1 = time.perf_counter()
    where = out_dir / "module.txt"
    where.unlink(missing_ok=True)
    with open(log, "w") as fh:  # the compiler's and ninja's output (VERBOSE=1)
        r = subprocess.run([sys.executable, "-c", _CHILD, str(where)], stdout=fh, stderr=subprocess.STDOUT,
                           env=env)
    seconds = time.perf_counter() - t1
    if r.returncode != 0 or not where.is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{tail}\ngsplat build failed after {seconds:.0f} s (exit {r.returncode}); full log: {log}")
    so = Path(where.read_text().strip())
    needed = _needed_libs(so)
    if not any(n.startswith("libcudart.so.") for n in needed):
        raise RuntimeError(f"{so} does not name libcudart.so.N among its libraries: {needed}")
    archs = _archs(so.parent / "build.ninja")
    want = "sm_" + arch.replace(".", "")
    if want not in archs:
        raise RuntimeError(f"{so} was compiled for {archs or 'no GPU code'}, not {want}")
    import gsplat
    import torch

    report = {
        "seconds": round(seconds, 1), "toolchain_install_s": round(t_install, 1), "arch": arch,
        "gpu_code": archs, "max_jobs": jobs, "fast_compile": fast, "module": str(so),
        "module_mib": round(so.stat().st_size / 2**20, 1), "needed": needed,
        "gsplat": gsplat.__version__, "torch": torch.__version__, "toolchain": list(cuda_toolchain.TOOLCHAIN),
        "cpus": os.cpu_count(), "load_at_end": round(os.getloadavg()[0], 2), "machine": platform.machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    (out_dir / "gsplat-build.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("build/gsplat"), help="toolchain, build folder and report")
    ap.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST (9.0 = H100/H200, 8.6 = A10G)")
    ap.add_argument("--jobs", type=int, default=2, help="MAX_JOBS for ninja")
    ap.add_argument("--fast", action="store_true", help="FAST_COMPILE=1 (-O0), to test the script only")
    args = ap.parse_args(argv)
    try:
        rep = build(args.dir, args.arch, args.jobs, args.fast)
    except (RuntimeError, cuda_toolchain.ToolchainError, subprocess.CalledProcessError, OSError) as e:
        msg = str(e).rstrip().splitlines()
        if len(msg) > 1:
            print("\n".join(msg[:-1]), file=sys.stderr)
        print(f"build_gsplat: error: {msg[-1] if msg else type(e).__name__}", file=sys.stderr)
        return 1
    print(f"build_gsplat: gsplat {rep['gsplat']} CUDA extension for sm_{args.arch.replace('.', '')} built and "
          f"linked in {rep['seconds']:.0f} s (MAX_JOBS={rep['max_jobs']}, {rep['cpus']} CPUs; toolchain install "
          f"{rep['toolchain_install_s']:.0f} s); {rep['module']} ({rep['module_mib']} MiB), needs "
          f"{', '.join(n for n in rep['needed'] if 'cudart' in n)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
