"""A test export format, added the way a user adds one: this file, named in $SCTD3D_PLUGINS.

`xyz`: the Gaussian means as text lines "x y z" (a point cloud most tools open)."""

from stages.export.formats import ExportFormat, register

FILE = "points.xyz"


def encode(asset):
    means = asset.gaussians.means.detach().cpu().double().numpy()
    return {FILE: "".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in means).encode()}


register(ExportFormat(name="xyz", files={FILE: "xyz"}, encode=encode,
                      card_line="`points.xyz` (Gaussian means, one `x y z` line each)",
                      axes="sctd3d world"))
