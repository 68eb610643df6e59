"""A 3D Gaussian scene: raw parameters and their activations (the container; no training).

`Gaussians` holds pre-activation tensors (what the optimiser sees); activated views are
properties. The optimiser that trains them from render outputs is `kernels.trainer`; this module
imports nothing from the renderer or the trainer, so both can build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh")


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC spherical-harmonic coefficient whose colour is `rgb`."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


@dataclass
class Gaussians:
    """Raw (pre-activation) parameters of N Gaussians."""

    means: Tensor  # (N, 3)
    log_scales: Tensor  # (N, 3)
    quats: Tensor  # (N, 4) wxyz, unnormalised
    opacity_logits: Tensor  # (N,)
    sh: Tensor  # (N, (deg+1)**2, 3); sh[:, 0] is the DC term
    sh_degree: int = 0

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        k = (int(self.sh_degree) + 1) ** 2
        expected = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,),
                    "sh": (n, k, 3)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape or n < 0:
                raise ValueError(
                    f"Gaussians.{name} has shape {got}, expected {shape} (N={n}, sh_degree={self.sh_degree})"
                )
        if not 0 <= int(self.sh_degree) <= 3:
            raise ValueError(f"Gaussians.sh_degree={self.sh_degree}: supported degrees are 0..3")

    # activated views -------------------------------------------------------------------------
    @property
    def scales(self) -> Tensor:
        return torch.exp(self.log_scales)

    @property
    def rotations(self) -> Tensor:
        return F.normalize(self.quats, dim=-1)

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> Tensor:
        """View-independent RGB from the DC term (what a degree-0 render shows)."""
        return torch.clamp_min(sh0_to_rgb(self.sh[:, 0]), 0.0)

    # bookkeeping -----------------------------------------------------------------------------
    def num(self) -> int:
        return int(self.means.shape[0])

    def params(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def requires_grad_(self, flag: bool = True) -> "Gaussians":
        """Make every parameter a leaf that (does not) require grad; returns self."""
        for name in PARAM_NAMES:
            setattr(self, name, getattr(self, name).detach().requires_grad_(flag))
        return self

    def detach_clone(self) -> "Gaussians":
        return Gaussians(*(getattr(self, n).detach().clone() for n in PARAM_NAMES), sh_degree=self.sh_degree)

    def to(self, device: torch.device | str) -> "Gaussians":
        return Gaussians(*(getattr(self, n).to(device) for n in PARAM_NAMES), sh_degree=self.sh_degree)

    def state_dict(self) -> dict[str, Tensor]:
        d = {n: getattr(self, n).detach().clone() for n in PARAM_NAMES}
        d["sh_degree"] = torch.tensor(int(self.sh_degree))
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Tensor]) -> "Gaussians":
        missing = [k for k in (*PARAM_NAMES, "sh_degree") if k not in d]
        if missing:
            raise KeyError(f"Gaussians.from_state_dict: missing keys {missing}; got {sorted(d)}")
        return cls(*(d[n].detach().clone() for n in PARAM_NAMES), sh_degree=int(d["sh_degree"]))


def quat_to_rotmat(q: Tensor) -> Tensor:
    """(..., 3, 3) rotation from wxyz quaternions (normalised here)."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
         2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
         2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))
