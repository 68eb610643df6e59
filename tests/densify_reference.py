"""Reference: the authors' densification statistics, written from their training loop.

SegmentDreamer `train.py` (= LucidDreamer `train.py`) renders the C_batch_size views one at a time:

    for i in range(C_batch_size):
        render_pkg = render(viewpoint_cam, gaussians, ...)   # a new screenspace_points tensor per call
        image, viewspace_point_tensor, visibility_filter, radii = render_pkg[...]
    ...
    loss.backward()
    if iteration < opt.densify_until_iter:
        gaussians.max_radii2D[visibility_filter] = torch.max(gaussians.max_radii2D[visibility_filter],
                                                             radii[visibility_filter])
        gaussians.add_densification_stats(viewspace_point_tensor, visibility_filter)

with `scene/gaussian_model.py`:

    def add_densification_stats(self, viewspace_point_tensor, update_filter):
        self.xyz_gradient_accum[update_filter] += torch.norm(viewspace_point_tensor.grad[update_filter, :2],
                                                             dim=-1, keepdim=True)
        self.denom[update_filter] += 1

and `grads = xyz_gradient_accum / denom; grads[grads.isnan()] = 0` at densification. The loop
variables are rebound by every view, so only the LAST view of the batch enters. Their rasteriser
(diff-gaussian-rasterization, backward.cu: `ddelx_dx = 0.5 * W`) gives the gradient of the
NDC position, i.e. the pixel gradient times (W / 2, H / 2).
"""

from __future__ import annotations

import torch
from torch import Tensor


class AuthorsDensificationStats:
    def __init__(self, n: int) -> None:
        self.xyz_gradient_accum = torch.zeros((n, 1))
        self.denom = torch.zeros((n, 1))
        self.max_radii2D = torch.zeros(n)

    def iteration(self, views: list[tuple[Tensor, Tensor]], width: int, height: int) -> None:
        """`views`: per rendered view in loop order, (pixel-unit means2d gradient (N, 2), radii (N,))."""
        for pixel_grad, radii in views:          # the loop: each view rebinds the variables
            viewspace_grad = pixel_grad * torch.tensor([0.5 * width, 0.5 * height])
            visibility_filter = radii > 0
            radii_f = radii.float()
        vf = visibility_filter
        self.max_radii2D[vf] = torch.max(self.max_radii2D[vf], radii_f[vf])
        self.xyz_gradient_accum[vf] += torch.norm(viewspace_grad[vf, :2], dim=-1, keepdim=True)
        self.denom[vf] += 1

    def grads(self) -> Tensor:
        g = self.xyz_gradient_accum / self.denom
        g[g.isnan()] = 0.0
        return g[:, 0]
