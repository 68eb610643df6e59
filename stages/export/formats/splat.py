"""`asset.splat`: the antimatter15 `.splat` layout (32 bytes per Gaussian, no SH beyond the DC
colour), the format GaussianSplats3D (0.4.x; it reads SPZ 1-2 only, not v3), Spark and most web
viewers read.

Layout per Gaussian, little-endian: position float32 x3, scale float32 x3 (linear, exp of the log
scale), colour uint8 RGBA (RGB = 0.5 + SH_C0 * f_dc, A = sigmoid(opacity)), rotation uint8 x4
(w, x, y, z of the unit quaternion, q * 128 + 128). Ordered by decreasing size x opacity, as the
reference converter does (viewers that stream it show the big splats first).

Axes: sctd3d world unchanged (y-up), the three.js default of GaussianSplats3D and Spark.
"""

from __future__ import annotations

import numpy as np

from stages.export.formats.base import WORLD_AXES, ExportFormat, SplatAsset, register

FILE = "asset.splat"
DTYPE = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def splat_bytes(g) -> bytes:
    """The .splat bytes of Gaussians `g` (kernels.gaussians.Gaussians)."""
    means = g.means.detach().cpu().double().numpy()
    scales = g.scales.detach().cpu().double().numpy()
    rgb = g.colors.detach().cpu().double().numpy()
    alpha = g.opacities.detach().cpu().double().numpy().reshape(-1)
    q = g.rotations.detach().cpu().double().numpy()
    order = np.argsort(-(scales.prod(1) * alpha), kind="stable")
    out = np.zeros(len(means), DTYPE)
    out["pos"] = means[order]
    out["scale"] = scales[order]
    out["rgba"][:, :3] = np.clip(np.rint(rgb[order] * 255), 0, 255)
    out["rgba"][:, 3] = np.clip(np.rint(alpha[order] * 255), 0, 255)
    out["rot"] = np.clip(np.rint(q[order] * 128 + 128), 0, 255)
    return out.tobytes()


def encode(asset: SplatAsset) -> dict[str, bytes]:
    return {FILE: splat_bytes(asset.gaussians)}


FORMAT = register(ExportFormat(
    name="splat", files={FILE: "splat"}, encode=encode,
    axes=f"sctd3d world unchanged ({WORLD_AXES})",
    card_line="`asset.splat` (antimatter15 .splat, 32 B/Gaussian, DC colour only: "
              "GaussianSplats3D, Spark)"))
