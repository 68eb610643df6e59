"""Forward+backward time of the torch render backend vs a dense reference (gsplat torch helpers).

The dense reference projects with gsplat.cuda._torch_impl and composites every pixel against every
Gaussian (depth-sorted, exclusive log-cumsum transmittance), chunked over pixels with activation
checkpointing so 50k Gaussians at 128x128 fit in memory. Same scene, same camera, same run.

    .venv/bin/python benchmarks/bench_render.py [--sizes 10000,50000] [--res 64,128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
from gsplat.cuda import _torch_impl as gt
from torch.utils.checkpoint import checkpoint

from kernels.cameras import orbit_cameras
from kernels.gaussians import Gaussians, rgb_to_sh0
from kernels.render import RasterSettings, render


def make_scene(n: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * torch.rand(n, 1, generator=g) ** (1 / 3)  # uniform in the unit ball
    log_scales = math.log(0.01) + math.log(4.0) * torch.rand(n, 3, generator=g)  # 0.01..0.04
    return Gaussians(means, log_scales, torch.randn(n, 4, generator=g), torch.randn(n, generator=g) - 1.0,
                     rgb_to_sh0(torch.rand(n, 1, 3, generator=g))).requires_grad_()


def _dense_chunk(px, py, mu, con, op, feat, clamp):
    dx, dy = px[:, None] - mu[None, :, 0], py[:, None] - mu[None, :, 1]
    sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
    a = torch.clamp_max(op * torch.exp(-sigma), clamp)
    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
    lg = torch.log1p(-a)
    log_t = torch.cumsum(lg, 1) - lg
    w = a * torch.exp(log_t) * ((log_t + lg) > math.log(1e-4)).detach()
    return torch.cat([w @ feat, w.sum(1, keepdim=True)], 1)


def dense_render(g: Gaussians, cams, pixels_per_chunk: int, rows: int) -> torch.Tensor:
    """(B, rows, W, 4) rgb+alpha over black for a central band of `rows` image rows, every pixel
    against every visible Gaussian (cost is exactly linear in the number of pixels)."""
    covars, _ = gt._quat_scale_to_covar_preci(g.quats, g.scales, True, False)
    radii, means2d, depths, conics, _ = gt._fully_fused_projection(
        g.means, covars, cams.viewmats, cams.Ks, cams.width, cams.height, eps2d=0.3, near_plane=0.01, far_plane=1e3)
    W, H = cams.width, cams.height
    r0 = (H - rows) // 2
    ys, xs = torch.meshgrid(torch.arange(r0, r0 + rows) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    px, py = xs.reshape(-1).float(), ys.reshape(-1).float()
    out = []
    for b in range(len(cams)):
        idx = (radii[b] > 0).all(-1).nonzero()[:, 0]
        idx = idx[torch.argsort(depths[b, idx].detach())]
        mu, con, op, col = means2d[b, idx], conics[b, idx], g.opacities[idx], g.colors[idx]
        parts = [checkpoint(_dense_chunk, px[i:i + pixels_per_chunk], py[i:i + pixels_per_chunk], mu, con,
                            op, col, 0.99, use_reentrant=False)
                 for i in range(0, rows * W, pixels_per_chunk)]
        out.append(torch.cat(parts).reshape(rows, W, 4))
    return torch.stack(out)


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, res = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return best, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,50000")
    ap.add_argument("--res", default="64,128")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dense-budget", type=float, default=2.2e8,
                    help="max pixel x Gaussian entries the dense reference evaluates; beyond it a central "
                         "band of rows is rendered and the time scaled to the full image")
    ap.add_argument("--dense-elems", type=int, default=8_000_000, help="pixel x Gaussian entries per dense chunk")
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'N':>7} {'res':>5} {'pairs':>10} {'torch fwd+bwd s':>16} {'dense fwd+bwd s':>16} {'speed-up':>9} "
          f"{'max |d rgb|':>12}")
    for n in [int(x) for x in a.sizes.split(",")]:
        g = make_scene(n)
        for r in [int(x) for x in a.res.split(",")]:
            cams = orbit_cameras(1, elevation_deg=15.0, radius=3.5, fovy=0.6, width=r, height=r)

            def ours():
                for p in g.params().values():
                    p.grad = None
                out = render(g, cams, backend="torch", settings=RasterSettings())
                (out.rgb.sum() + out.alpha.sum()).backward()
                return out.rgb.detach()

            def dense():
                for p in g.params().values():
                    p.grad = None
                img = dense_render(g, cams, max(1, a.dense_elems // n), rows)
                (img[..., :3].sum() + img[..., 3].sum()).backward()
                return img[..., :3].detach()

            from kernels.render import _pixel_pairs, project  # pair count for the table
            with torch.no_grad():
                pr = project(g.means, g.quats, g.scales, cams.viewmats, cams.Ks, r, r, 0.3, 0.01, 1e3)
                pairs = _pixel_pairs(pr, g.opacities, r, r, 1 / 255)[0].numel()
            t_ours, img_ours = timed(ours, a.repeats)
            rows = min(r, max(1, int(a.dense_budget // (n * r))))
            t_ours, img_ours = timed(ours, a.repeats)
            t_dense, img_dense = timed(dense, 1)
            t_dense *= r / rows
            r0 = (r - rows) // 2
            diff = (img_ours[:, r0:r0 + rows] - img_dense).abs().max().item()
            note = "" if rows == r else f"  (dense timed on {rows}/{r} rows, scaled)"
            print(f"{n:>7} {r:>5} {pairs:>10} {t_ours:>16.3f} {t_dense:>16.3f} {t_dense / t_ours:>8.1f}x "
                  f"{diff:>12.2e}{note}", flush=True)


if __name__ == "__main__":
    main()
