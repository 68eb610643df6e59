"""An independent SPZ reader, written from the SPZ format description (nianticlabs/spz README:
gzip stream, 16-byte little-endian header `magic 'NGSP', version, numPoints, shDegree,
fractionalBits, flags, reserved`, then positions (24-bit signed fixed point), alphas, colours,
scales, rotations, SH) and nothing of splat-transform: it checks what the exporter wrote,
axes included (SPZ stores RUB, the OpenGL / three.js convention), not the tool's own decoder.
"""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import torch

from kernels.gaussians import Gaussians

MAGIC = 0x5053474E
COLOR_SCALE = 0.15  # colour byte = (f_dc * 0.15 + 0.5) * 255


def read_spz(data: bytes) -> dict:
    """{version, num_points, sh_degree, fractional_bits, flags, means (N,3) float64 in the file's
    RUB axes, alphas, sh_dc, log_scales, quats (N,4) wxyz, sh_rest (N,K-1,3)}."""
    raw = gzip.decompress(data)
    magic, version, n = struct.unpack_from("<III", raw, 0)
    sh_degree, frac, flags, reserved = raw[12], raw[13], raw[14], raw[15]
    if magic != MAGIC:
        raise ValueError(f"not SPZ: magic {magic:#x}")
    if version not in (2, 3):
        raise ValueError(f"SPZ version {version}: this reader knows 2 and 3")
    off = 16
    b = np.frombuffer(raw, np.uint8)
    pos = b[off:off + 9 * n].reshape(n, 3, 3).astype(np.int64)
    off += 9 * n
    fixed = pos[..., 0] | (pos[..., 1] << 8) | (pos[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)  # 24-bit two's complement
    means = fixed / float(1 << frac)
    alphas = b[off:off + n] / 255.0
    off += n
    sh_dc = (b[off:off + 3 * n].reshape(n, 3) / 255.0 - 0.5) / COLOR_SCALE
    off += 3 * n
    log_scales = b[off:off + 3 * n].reshape(n, 3) / 16.0 - 10.0
    off += 3 * n
    if version == 2:  # x, y, z as signed bytes; w >= 0 from the unit length
        xyz = b[off:off + 3 * n].reshape(n, 3) / 127.5 - 1.0
        off += 3 * n
        w = np.sqrt(np.clip(1.0 - (xyz ** 2).sum(1), 0.0, None))
        quats = np.concatenate([w[:, None], xyz], 1)
    else:  # smallest three: 2 bits index of the largest, 3 x (sign bit + 9-bit magnitude)
        comp = b[off:off + 4 * n].reshape(n, 4).astype(np.uint64)
        off += 4 * n
        comp = comp[:, 0] | (comp[:, 1] << 8) | (comp[:, 2] << 16) | (comp[:, 3] << 24)
        largest = (comp >> 30).astype(np.int64)
        xyzw = np.zeros((n, 4))
        for i in range(n):
            c, ss = int(comp[i]), 0.0
            for k in (3, 2, 1, 0):
                if k == largest[i]:
                    continue
                v = math.sqrt(0.5) * (c & 511) / 511.0
                xyzw[i, k] = -v if (c >> 9) & 1 else v
                ss += xyzw[i, k] ** 2
                c >>= 10
            xyzw[i, largest[i]] = math.sqrt(max(0.0, 1.0 - ss))
        quats = xyzw[:, [3, 0, 1, 2]]
    k = (sh_degree + 1) ** 2 - 1
    sh_rest = ((b[off:off + n * k * 3].reshape(n, k, 3).astype(np.float64) - 128.0) / 128.0
               if k else np.zeros((n, 0, 3)))
    off += n * k * 3
    return {"version": version, "num_points": n, "sh_degree": sh_degree,
            "fractional_bits": frac, "flags": flags, "reserved": reserved, "means": means,
            "alphas": alphas, "sh_dc": sh_dc, "log_scales": log_scales, "quats": quats,
            "sh_rest": sh_rest, "trailing_bytes": len(raw) - off}


def spz_gaussians(data: bytes) -> Gaussians:
    d = read_spz(data)
    a = np.clip(d["alphas"], 1e-6, 1 - 1e-6)
    t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    sh = np.concatenate([d["sh_dc"][:, None, :], d["sh_rest"]], 1)
    return Gaussians(means=t(d["means"]), log_scales=t(d["log_scales"]), quats=t(d["quats"]),
                     opacity_logits=t(np.log(a / (1 - a))), sh=t(sh), sh_degree=d["sh_degree"])
