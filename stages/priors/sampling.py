"""DDIM (eta 0) sampling from any `Prior` with classifier-free guidance.

Why one function: the toy SD's acceptance check (do a prompt's samples look like its object?), its
benchmark and the FID "prior" reference all sample the same way; cond and negative rows go through
ONE eps call per step, as in generation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from kernels.ddim import ddim_step


@torch.no_grad()
def sample(prior, prompts: Sequence[str], steps: int = 20, guidance_scale: float = 5.0,
           generator: torch.Generator | None = None, negative_prompt: str = "", batch: int = 64) -> Tensor:
    """`steps` DDIM transitions from t = T-1 to a clean image per prompt: (B, 3, H, W) rgb, float32
    on CPU, not clamped. Noise comes from `generator` on CPU, so CPU and GPU runs start alike."""
    if steps < 1:
        raise ValueError(f"sample: steps={steps} must be >= 1")
    a = prior.alphas_cumprod.detach().double().cpu()
    ts = torch.linspace(a.shape[0] - 1, 0, steps + 1).round().long().tolist()
    neg = prior.embed([negative_prompt])
    outs = []
    for i in range(0, len(prompts), batch):
        chunk = list(prompts[i:i + batch])
        n = len(chunk)
        x = torch.randn(n, *prior.latent_shape, generator=generator).to(prior.device)
        emb = torch.cat([prior.embed(chunk), neg.expand(n, *neg.shape[1:])])
        for t_from, t_to in zip(ts[:-1], ts[1:]):
            e = prior.eps(torch.cat([x, x]), torch.full((2 * n,), t_from, device=prior.device), emb).float()
            e_w = e[n:] + guidance_scale * (e[:n] - e[n:])
            a_to = a[t_to] if t_to > 0 else torch.tensor(1.0, dtype=torch.float64)
            x = ddim_step(x, a[t_from].float().to(x.device), a_to.float().to(x.device), e_w)
        outs.append(prior.decode(x).float().cpu())
    return torch.cat(outs)
