"""The standard 3DGS `.ply` (what splat viewers read), written and read with plyfile.

Vertex properties, in this order, all float32: x y z nx ny nz f_dc_0..2 f_rest_* opacity
scale_0..2 rot_0..3. Values are raw parameters (opacity logit, log-scale, wxyz quaternion), and
f_rest is channel-major like 3DGS (all red coefficients of bands >= 1, then green, then blue).
Round trip is exact for float32 tensors (other dtypes are stored as float32).
"""

from __future__ import annotations

import io
import math
import os
from typing import BinaryIO, Union

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from kernels.gaussians import Gaussians

PathOrFile = Union[str, os.PathLike, BinaryIO]
_HEAD = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


class PlyFormatError(ValueError):
    """A .ply that is not a readable 3DGS splat file."""


def _name(f: PathOrFile) -> str:
    return os.fspath(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", "<stream>"))


def property_names(sh_degree: int) -> list[str]:
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return _HEAD + [f"f_rest_{i}" for i in range(n_rest)] + _TAIL


def save_ply(path_or_fileobj: PathOrFile, g: Gaussians) -> None:
    """Write `g` as a binary little-endian 3DGS .ply."""
    n = g.num()
    f32 = lambda t: t.detach().to("cpu", torch.float32).numpy()  # noqa: E731
    rest = g.sh[:, 1:].transpose(1, 2).reshape(n, -1)  # (N, 3*(K-1)) channel-major
    cols = np.concatenate(
        [f32(g.means), np.zeros((n, 3), np.float32), f32(g.sh[:, 0]), f32(rest),
         f32(g.opacity_logits)[:, None], f32(g.log_scales), f32(g.quats)], axis=1)
    names = property_names(g.sh_degree)
    arr = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        arr[name] = cols[:, i]
    PlyData([PlyElement.describe(arr, "vertex")], text=False, byte_order="<").write(path_or_fileobj)


def load_ply(path_or_fileobj: PathOrFile) -> Gaussians:
    """Read a 3DGS .ply; raises PlyFormatError naming the file and what is wrong."""
    name = _name(path_or_fileobj)
    try:
        if isinstance(path_or_fileobj, (str, os.PathLike)):
            with open(path_or_fileobj, "rb") as fh:
                raw = fh.read()
        else:
            raw = path_or_fileobj.read()
        ply = PlyData.read(io.BytesIO(raw))
    except FileNotFoundError:
        raise
    except Exception as exc:  # plyfile raises several types for bad headers / short bodies
        raise PlyFormatError(f"{name}: not a readable .ply file ({type(exc).__name__}: {exc})") from exc
    if "vertex" not in [e.name for e in ply.elements]:
        raise PlyFormatError(f"{name}: no 'vertex' element; found {[e.name for e in ply.elements]}")
    v = ply["vertex"]
    have = [p.name for p in v.properties]
    required = _HEAD + _TAIL
    missing = [p for p in required if p not in have]
    if missing:
        raise PlyFormatError(
            f"{name}: not a 3DGS splat file, vertex properties missing: {missing} (has {have[:12]}"
            f"{'...' if len(have) > 12 else ''})"
        )
    n_rest = sum(1 for p in have if p.startswith("f_rest_"))
    k = n_rest // 3 + 1
    deg = round(math.sqrt(k)) - 1
    if n_rest % 3 or (deg + 1) ** 2 != k or deg > 3:
        raise PlyFormatError(f"{name}: {n_rest} f_rest_* properties do not match an SH degree 0..3 "
                             "(expected 0, 9, 24 or 45)")
    missing_rest = [f"f_rest_{i}" for i in range(n_rest) if f"f_rest_{i}" not in have]
    if missing_rest:
        raise PlyFormatError(f"{name}: f_rest properties not numbered 0..{n_rest - 1}; missing {missing_rest[:5]}")
    data = v.data
    n = len(data)
    if n == 0:
        raise PlyFormatError(f"{name}: the vertex element is empty (0 Gaussians)")

    def cols(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(data[p], dtype=np.float32) for p in names], axis=1))

    means = cols(["x", "y", "z"])
    dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    sh = torch.cat([dc[:, None, :], rest.reshape(n, 3, k - 1).transpose(1, 2)], dim=1).contiguous()
    return Gaussians(
        means=means,
        log_scales=cols(["scale_0", "scale_1", "scale_2"]),
        quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=cols(["opacity"])[:, 0].contiguous(),
        sh=sh,
        sh_degree=deg,
    )
