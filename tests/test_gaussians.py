"""The Gaussians container: shapes, activations, state dicts, and that it stands alone."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.gaussians import Gaussians, rgb_to_sh0, sh0_to_rgb


def scene(n: int, seed: int = 0, scale: float = 0.05) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        (torch.rand(n, 3, generator=g) * 2 - 1) * 0.5,
        torch.full((n, 3), math.log(scale)) + 0.1 * torch.randn(n, 3, generator=g),
        torch.randn(n, 4, generator=g),
        torch.full((n,), 1.0),
        rgb_to_sh0(torch.rand(n, 1, 3, generator=g)),
    )


def test_activations_and_state_dict():
    g = scene(5)
    torch.testing.assert_close(sh0_to_rgb(rgb_to_sh0(torch.tensor([0.2, 0.7]))), torch.tensor([0.2, 0.7]))
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(5))
    assert torch.allclose(g.opacities, torch.sigmoid(torch.ones(5)))
    assert torch.allclose(g.scales, g.log_scales.exp())
    assert (g.colors >= 0).all() and g.colors.shape == (5, 3)
    h = Gaussians.from_state_dict(g.state_dict())
    assert h.num() == 5 and all(torch.equal(getattr(h, k), v) for k, v in g.params().items())
    with pytest.raises(ValueError, match=r"Gaussians.quats has shape \(5, 3\)"):
        Gaussians(g.means, g.log_scales, g.quats[:, :3], g.opacity_logits, g.sh)
    with pytest.raises(KeyError, match="missing keys"):
        Gaussians.from_state_dict({"means": g.means})


def test_the_container_imports_neither_renderer_nor_trainer():
    # issue 15: the trainer consumes render outputs; the parameter container must not depend on
    # either, so the renderer and the trainer can both build on it
    code = "import sys, kernels.gaussians; print(sorted(m for m in sys.modules if m.startswith('kernels')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "['kernels', 'kernels.gaussians']"
