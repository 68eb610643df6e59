"""The CUDA toolchain from PyPI that GPU nodes use to JIT-build gsplat (issue 20, item 1).

The wheels ship `lib/libcudart.so.13` but no `lib/libcudart.so`, and torch's extension builder links
with `-lcudart`: a one-kernel CUDA extension, built by torch's own builder exactly as gsplat's
is, compiles and then fails to link; `scripts/cuda_toolchain.py` adds the unversioned name and the
same build links, loads, needs `libcudart.so.13` (which the wheel provides at run time) and carries
sm_90 code. The toolchain is installed for real (the pins in cuda_toolchain.TOOLCHAIN, from the
package index, into a temporary folder). gsplat's full build is `make gsplat-build` (too long for
the suite; its time is in benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_gsplat  # noqa: E402
import cuda_toolchain  # noqa: E402

sys.path.pop(0)

pytestmark = pytest.mark.skipif(not torch.version.cuda or shutil.which("g++") is None,
                                reason="needs the CUDA build of torch and a host C++ compiler")

KERNEL = r"""
__global__ void add_one(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.0f;
}
extern "C" int sctd3d_add_one(float* x, int n) {
  add_one<<<(n + 255) / 256, 256>>>(x, n);
  return (int)cudaGetLastError();
}
"""
# torch's builder (ninja, nvcc, the link line gsplat's build uses), then load the library
BUILD = r"""
import sys, torch
from torch.utils.cpp_extension import load
path = load("sctd3d_onekernel", [sys.argv[1]], build_directory=sys.argv[2], is_python_module=False)
print("BUILT", path)
"""


@pytest.fixture(scope="module")
def toolchain(tmp_path_factory):
    target = tmp_path_factory.mktemp("cuda-toolchain")
    return target, cuda_toolchain.install(target)


def _build(toolchain, folder: Path) -> subprocess.CompletedProcess:
    target, home = toolchain
    folder.mkdir()
    (folder / "k.cu").write_text(KERNEL)
    return subprocess.run([sys.executable, "-c", BUILD, str(folder / "k.cu"), str(folder)], capture_output=True,
                          text=True, timeout=600, env=cuda_toolchain.build_env(home, target, "9.0"))


def test_one_kernel_extension_links_only_with_the_unversioned_runtime(toolchain, tmp_path):
    target, home = toolchain
    assert cuda_toolchain.installed(target) and str(torch.version.cuda).split(".")[0] == home.name[2:]
    lib = home / "lib"
    (lib / "libcudart.so").unlink()  # as the wheels ship it
    assert (lib / "libcudart.so.13").is_file()
    r = _build(toolchain, tmp_path / "before")
    assert r.returncode != 0 and "cannot find -lcudart" in r.stdout + r.stderr

    assert cuda_toolchain.ensure_unversioned_cudart(home) == lib / "libcudart.so"
    assert os.readlink(lib / "libcudart.so") == "libcudart.so.13"
    r = _build(toolchain, tmp_path / "after")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    so = Path(r.stdout.split("BUILT", 1)[1].strip())
    assert so.is_file() and "libcudart.so.13" in build_gsplat._needed_libs(so)
    assert build_gsplat._archs(so.parent / "build.ninja") == ["sm_90"]  # TORCH_CUDA_ARCH_LIST=9.0, no GPU asked


def test_cuda_home_is_found_and_a_missing_runtime_is_one_error(toolchain, tmp_path):
    target, home = toolchain
    assert cuda_toolchain.find_cuda_home([str(target)]) == home
    with pytest.raises(cuda_toolchain.ToolchainError, match="no nvidia/cu"):
        cuda_toolchain.find_cuda_home([str(tmp_path)])
    (tmp_path / "lib").mkdir()
    with pytest.raises(cuda_toolchain.ToolchainError, match="no libcudart.so.N"):
        cuda_toolchain.ensure_unversioned_cudart(tmp_path)
    assert cuda_toolchain.main(["home", "--target", str(target)]) == 0
