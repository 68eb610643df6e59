"""The torch backend against an independent dense reference built from gsplat's own PyTorch helpers.

Reference: gsplat.cuda._torch_impl (covariance + fully fused projection) and a dense compositor
written here (every pixel x every Gaussian, global depth sort, cumprod transmittance). Stated
tolerances: means2d/conics 1e-4 relative (float32 vs float64), images 1e-5 absolute per pixel.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.cameras import Cameras, look_at, intrinsics, orbit_cameras
from kernels.gaussians import Gaussians, rgb_to_sh0
import kernels.render as kr
from kernels.render import RasterSettings, gsplat_available, project, rasterize, render

gsplat_torch = pytest.importorskip("gsplat.cuda._torch_impl")

IMG_ATOL = 1e-5  # observed ~7e-7; a 0.99 vs 0.999 alpha clamp alone differs by ~1e-4
ALPHA_CLAMP = 0.999  # gsplat's CUDA kernel (min(0.999f, alpha)); the torch default must match


def random_scene(n: int, seed: int, dtype=torch.float32, scale=(0.02, 0.12), sh_degree: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.8
    log_scales = torch.log(scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    logits = torch.randn(n, generator=g) * 2.5 + 0.5  # some above the 0.999 clamp (logit > 6.9)
    sh = torch.randn(n, k, 3, generator=g) * 0.3
    sh[:, 0] = rgb_to_sh0(torch.rand(n, 3, generator=g))
    return Gaussians(means.to(dtype), log_scales.to(dtype), quats.to(dtype), logits.to(dtype),
                     sh.to(dtype), sh_degree=sh_degree)


def dense_reference(g: Gaussians, cams: Cameras, bg: torch.Tensor, alpha_clamp: float = ALPHA_CLAMP,
                    t_eps: float = 1e-4):
    """Float64 dense compositor on top of gsplat's projection helpers."""
    g = g.to("cpu")
    f = lambda t: t.detach().double()  # noqa: E731
    covars, _ = gsplat_torch._quat_scale_to_covar_preci(f(g.quats), f(g.scales), True, False)
    radii, means2d, depths, conics, _ = gsplat_torch._fully_fused_projection(
        f(g.means), covars, cams.viewmats.double(), cams.Ks.double(), cams.width, cams.height,
        eps2d=0.3, near_plane=0.01, far_plane=1e3)
    W, H = cams.width, cams.height
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5,
                            torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)
    op, col = f(g.opacities), f(g.colors)
    rgbs, alphas = [], []
    for b in range(len(cams)):
        vis = (radii[b] > 0).all(-1)
        idx = vis.nonzero()[:, 0]
        idx = idx[torch.argsort(depths[b, idx])]
        mu, con = means2d[b, idx], conics[b, idx]
        dx, dy = px - mu[None, :, 0], py - mu[None, :, 1]
        sigma = 0.5 * (con[:, 0] * dx**2 + con[:, 2] * dy**2) + con[:, 1] * dx * dy
        a = torch.clamp_max(op[idx] * torch.exp(-sigma), alpha_clamp)
        a = torch.where((a >= 1 / 255) & (sigma >= 0), a, torch.zeros_like(a))
        T = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1 - a[:, :-1]], 1), 1)
        w = a * T * (T * (1 - a) > t_eps)
        acc = w.sum(1, keepdim=True)
        rgbs.append((w @ col[idx] + (1 - acc) * bg[b].double()).reshape(H, W, 3))
        alphas.append(acc.reshape(H, W, 1))
    return torch.stack(rgbs), torch.stack(alphas), means2d, conics, radii


def cams_for_test(n=3, size=24, radius=3.0):
    return orbit_cameras(n, elevation_deg=20.0, radius=radius, fovy=0.7, width=size, height=size + 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_projection_matches_gsplat_helpers(seed):
    g = random_scene(200, seed)
    cams = cams_for_test()
    p = project(g.means, g.quats, g.scales, cams.viewmats, cams.Ks, cams.width, cams.height, 0.3, 0.01, 1e3)
    _, _, m_ref, c_ref, r_ref = dense_reference(g, cams, torch.zeros(len(cams), 3))
    vis = (r_ref > 0).all(-1)
    assert vis.sum() > 100
    torch.testing.assert_close(p.means2d[vis].double(), m_ref[vis], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p.conics[vis].double(), c_ref[vis], rtol=1e-4, atol=1e-4)
    # same visibility set (our radius is the max of gsplat's per-axis radii)
    assert torch.equal(p.radii > 0, vis)
    torch.testing.assert_close(p.radii[vis], r_ref[vis].max(-1).values.to(torch.int32))


@pytest.mark.parametrize("seed,n", [(0, 300), (3, 800)])
def test_images_match_dense_reference(seed, n):
    g = random_scene(n, seed)
    cams = cams_for_test()
    bg = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.5, 0.9]])
    out = render(g, cams, bg, backend="torch")
    ref_rgb, ref_a, *_ = dense_reference(g, cams, bg)
    assert ref_a.max() > 0.9 and (ref_a < 0.01).any()  # the scene has both busy and empty pixels
    assert (out.rgb.double() - ref_rgb).abs().max() < IMG_ATOL
    assert (out.alpha.double() - ref_a).abs().max() < IMG_ATOL


def test_chunked_checkpointed_path_matches_single_chunk():
    g = random_scene(400, 5).requires_grad_()
    cams = cams_for_test(2)
    grads = []
    outs = []
    for chunk in (10**9, 300):
        for p in g.params().values():
            p.grad = None
        out = render(g, cams, backend="torch", settings=RasterSettings(chunk_pairs=chunk))
        (out.rgb * torch.linspace(0, 1, 3)).sum().backward()
        outs.append(out.rgb.detach())
        grads.append([p.grad.clone() for p in g.params().values()])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gradcheck_float64_tiny_scene():
    g0 = random_scene(4, 11, dtype=torch.float64, scale=(0.15, 0.3))
    g0.opacity_logits = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=torch.float64)
    g0.means = g0.means * 0.3
    cams = orbit_cameras(1, elevation_deg=10.0, radius=3.0, fovy=0.6, width=8, height=8)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)

    def f(means, log_scales, quats, logits, sh):
        g = Gaussians(means, log_scales, quats, logits, sh)
        out = render(g, cams, bg, backend="torch")
        return out.rgb, out.alpha, out.depth

    inputs = tuple(p.detach().clone().requires_grad_() for p in g0.params().values())
    assert render(g0, cams, backend="torch").alpha.max() > 0.3
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def _single(mean, rgb=(1.0, 0.0, 0.0), scale=0.05, logit=3.0, dtype=torch.float32):
    return Gaussians(torch.tensor([mean], dtype=dtype), torch.full((1, 3), math.log(scale), dtype=dtype),
                     torch.tensor([[1.0, 0, 0, 0]], dtype=dtype), torch.tensor([logit], dtype=dtype),
                     rgb_to_sh0(torch.tensor([[rgb]], dtype=dtype)))


def test_single_gaussian_lands_at_projected_centre():
    eye = torch.tensor([[0.7, 0.4, 3.0]])
    vm = look_at(eye, torch.zeros(1, 3), torch.tensor([0.0, 1.0, 0.0]))
    K = intrinsics(torch.tensor([0.8]), 32, 32)
    cams = Cameras(vm, K, 32, 32, torch.zeros(1), torch.zeros(1), torch.ones(1), torch.tensor([0.8]))
    point = torch.tensor([0.15, -0.1, 0.05])
    pc = vm[0, :3, :3] @ point + vm[0, :3, 3]
    uv = (K[0] @ pc)[:2] / pc[2]
    out = render(_single(point.tolist()), cams, backend="torch")
    torch.testing.assert_close(out.means2d[0, 0], uv, atol=1e-4, rtol=0)
    a = out.alpha[0, ..., 0]
    iy, ix = divmod(int(a.argmax()), 32)
    assert (ix, iy) == (int(uv[0]), int(uv[1]))
    assert out.radii[0, 0] > 0


def test_front_to_back_order_and_background():
    cams = orbit_cameras(1, elevation_deg=0.0, radius=3.0, fovy=0.6, width=16, height=16)  # on +z
    near_red = _single([0.0, 0.0, 0.5], (1.0, 0.0, 0.0), scale=0.2, logit=0.0)  # opacity 0.5
    far_blue = _single([0.0, 0.0, -0.5], (0.0, 0.0, 1.0), scale=0.2, logit=0.0)
    both = Gaussians(*(torch.cat([p, q]) for p, q in zip(near_red.params().values(), far_blue.params().values())))
    bg = torch.tensor([0.0, 1.0, 0.0])
    out = render(both, cams, bg, backend="torch")
    c = out.rgb[0, 8, 8]
    # front-to-back: C = a1 c1 + (1 - a1) a2 c2 + (1 - a1)(1 - a2) bg, with the red one in front
    a1 = render(near_red, cams, backend="torch").alpha[0, 8, 8, 0]
    a2 = render(far_blue, cams, backend="torch").alpha[0, 8, 8, 0]
    assert a1 > 0.3 and a2 > 0.3
    expect = torch.stack([a1, (1 - a1) * (1 - a2), (1 - a1) * a2])
    torch.testing.assert_close(c, expect, atol=1e-5, rtol=0)
    assert c[0] > c[2]  # red in front dominates
    # depth is the alpha-weighted camera z, between the two centres
    assert 2.5 < float(out.depth[0, 8, 8, 0]) < 3.5
    # background shows exactly where nothing reaches
    assert float(out.alpha[0, 0, 0, 0]) == 0.0
    torch.testing.assert_close(out.rgb[0, 0, 0], bg)
    assert float(out.depth[0, 0, 0, 0]) == 0.0


def test_means2d_gradient_retained_and_culling():
    g = random_scene(50, 2).requires_grad_()
    g.means.data[0] = torch.tensor([0.0, 0.0, 10.0])  # behind the +z camera at radius 3
    cams = orbit_cameras(2, elevation_deg=0.0, radius=3.0, fovy=0.6, width=16, height=16)
    out = render(g, cams, backend="torch")
    assert out.means2d.shape == (2, 50, 2) and out.radii.shape == (2, 50)
    out.rgb.sum().backward()
    assert out.means2d.grad is not None and out.means2d.grad.abs().sum() > 0
    assert out.radii[0, 0] == 0
    assert torch.isfinite(g.means.grad).all()


def test_sh_degree_1_changes_with_view_and_matches_dc_at_zero():
    g = random_scene(100, 4, sh_degree=1)
    cams = cams_for_test(2)
    out = render(g, cams, backend="torch")
    g0 = Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :1].clone())
    g.sh[:, 1:] = 0
    torch.testing.assert_close(render(g, cams, backend="torch").rgb, render(g0, cams, backend="torch").rgb)
    assert not torch.allclose(out.rgb, render(g0, cams, backend="torch").rgb)


def test_bad_arguments_are_named():
    g = random_scene(5, 0)
    cams = cams_for_test(2)
    with pytest.raises(ValueError, match="backend 'vulkan'"):
        render(g, cams, backend="vulkan")
    with pytest.raises(ValueError, match=r"background must be \(3,\) or \(2, 3\)"):
        render(g, cams, torch.zeros(4))
    with pytest.raises(RuntimeError, match="needs CUDA"):
        render(g, cams, backend="gsplat")


def test_empty_scene_renders_background():
    g = random_scene(3, 0)
    g.means = g.means + 100.0
    out = render(g, cams_for_test(1), torch.tensor([0.3, 0.3, 0.3]), backend="torch")
    assert torch.all(out.alpha == 0) and torch.allclose(out.rgb, torch.full_like(out.rgb, 0.3))


@pytest.mark.skipif(not gsplat_available(), reason="needs a CUDA GPU and gsplat's CUDA extension")
def test_gsplat_and_torch_backends_agree_on_cuda():
    g = random_scene(2000, 7).to("cuda").requires_grad_()
    cams = cams_for_test(3, size=64).to("cuda")
    bg = torch.tensor([0.2, 0.4, 0.6], device="cuda")
    a = render(g, cams, bg, backend="gsplat")
    b = render(g, cams, bg, backend="torch")  # one RasterSettings default drives both backends
    assert (a.rgb - b.rgb).abs().max() < 2e-3
    assert (a.alpha - b.alpha).abs().max() < 2e-3
    torch.testing.assert_close(a.means2d, b.means2d, atol=1e-3, rtol=1e-4)
    assert torch.equal(a.radii > 0, b.radii > 0)
    (a.rgb.sum()).backward()
    ga = g.means.grad.clone()
    g.means.grad = None
    (b.rgb.sum()).backward()
    cos = torch.nn.functional.cosine_similarity(ga.flatten(), g.means.grad.flatten(), dim=0)
    assert cos > 0.99


def _flat(g: Gaussians) -> tuple[torch.Tensor, ...]:
    """The activated tensors gsplat.rasterization() takes, built here from the raw parameters."""
    return (g.means, g.quats, torch.exp(g.log_scales), torch.sigmoid(g.opacity_logits))


@pytest.mark.parametrize("sh_degree", [0, 1])
def test_rasterize_on_flat_tensors_equals_render_bit_for_bit(sh_degree):
    g = random_scene(300, 8, sh_degree=sh_degree)
    cams = cams_for_test(3)
    bg = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.5, 0.9]])
    ref = render(g, cams, bg, backend="torch")
    out = rasterize(*_flat(g), g.sh, cams.viewmats, cams.Ks, cams.width, cams.height,
                    sh_degree=sh_degree, backgrounds=bg, near_plane=0.01, far_plane=1e3, backend="torch")
    assert ref.alpha.max() > 0.9
    for name in ("rgb", "alpha", "depth", "means2d", "radii"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    # per-camera SH (C, N, K, 3) is the same as shared SH
    per_cam = rasterize(*_flat(g), g.sh[None].expand(3, -1, -1, -1), cams.viewmats, cams.Ks, cams.width,
                        cams.height, sh_degree=sh_degree, backgrounds=bg, far_plane=1e3, backend="torch")
    assert torch.equal(per_cam.rgb, ref.rgb)


def test_rasterize_post_activation_colors_and_extra_channels():
    """sh_degree=None: colours (N, D) as given, like gsplat; a degree-0 render is their D=3 case,
    and every channel composites on its own (channels 3, 4 repeat channels 0, 1 exactly)."""
    g = random_scene(300, 9)
    cams = cams_for_test(2)
    ref = render(g, cams, backend="torch")
    feats = torch.cat([g.colors, g.colors[:, :2]], dim=1)  # (N, 5)
    out = rasterize(*_flat(g), feats, cams.viewmats, cams.Ks, cams.width, cams.height, far_plane=1e3,
                    backend="torch")
    assert out.rgb.shape == (2, cams.height, cams.width, 5)
    assert torch.equal(out.rgb[..., :3], ref.rgb) and torch.equal(out.rgb[..., 3:], ref.rgb[..., :2])
    assert torch.equal(out.alpha, ref.alpha) and torch.equal(out.depth, ref.depth)
    with pytest.raises(ValueError, match=r"colors has shape \(300, 3\), expected \(N, K, 3\)"):
        rasterize(*_flat(g), g.colors, cams.viewmats, cams.Ks, cams.width, cams.height, sh_degree=0)
    with pytest.raises(ValueError, match=r"backgrounds has shape \(3,\), expected \(2, 5\)"):
        rasterize(*_flat(g), feats, cams.viewmats, cams.Ks, cams.width, cams.height,
                  backgrounds=torch.zeros(3))
    with pytest.raises(ValueError, match=r"scales has shape \(300, 2\)"):
        rasterize(g.means, g.quats, g.scales[:, :2], g.opacities, g.sh, cams.viewmats, cams.Ks,
                  cams.width, cams.height, sh_degree=0)


def test_torch_default_alpha_clamp_is_gsplats():
    """The shared default is gsplat's 0.999, and the test scene reaches it: a 0.99 clamp renders
    visibly differently (so the dense-reference comparison above pins the clamp)."""
    assert RasterSettings().alpha_clamp == ALPHA_CLAMP == kr.GSPLAT_FIXED["alpha_clamp"]
    g = random_scene(800, 3)
    cams = cams_for_test()
    a = render(g, cams, backend="torch")
    b = render(g, cams, backend="torch", settings=RasterSettings(alpha_clamp=0.99))
    assert (a.rgb - b.rgb).abs().max() > 3 * IMG_ATOL  # measured 9.7e-5


def test_radius_clip_culls_small_gaussians_like_gsplat():
    g = random_scene(300, 6)
    cams = cams_for_test(2)
    full = render(g, cams, backend="torch")
    r = full.radii[full.radii > 0]
    clip = float(r.float().median())
    out = render(g, cams, backend="torch", settings=RasterSettings(radius_clip=clip))
    # gsplat: culled when both per-axis radii are <= radius_clip, i.e. the larger one is
    assert torch.equal(out.radii > 0, full.radii > clip)
    assert 0 < int((out.radii > 0).sum()) < int((full.radii > 0).sum())
    assert out.alpha.sum() < full.alpha.sum()


def test_gsplat_backend_gets_the_shared_settings(monkeypatch):
    """One RasterSettings drives gsplat too: eps2d, radius_clip and near/far reach its call."""
    gsplat = pytest.importorskip("gsplat")
    seen = {}
    g = random_scene(20, 1)
    cams = cams_for_test(2)
    C, N, H, W = 2, 20, cams.height, cams.width

    def fake_rasterization(**kw):
        seen.update(kw)
        return (torch.full((C, H, W, 4), 0.5), torch.full((C, H, W, 1), 0.25),
                {"means2d": torch.zeros(C, N, 2), "radii": torch.ones(C, N, 2, dtype=torch.int32)})

    monkeypatch.setattr(gsplat, "rasterization", fake_rasterization)
    s = RasterSettings(eps2d=0.1, radius_clip=1.5)
    out = kr._rasterize_gsplat(*_flat(g), g.sh, cams.viewmats, cams.Ks, W, H, 0, 0.2, 50.0, s)
    assert (seen["eps2d"], seen["radius_clip"], seen["near_plane"], seen["far_plane"]) == (0.1, 1.5, 0.2, 50.0)
    assert seen["sh_degree"] == 0 and seen["render_mode"] == "RGB+ED" and seen["colors"] is g.sh
    assert out.rgb.shape == (C, H, W, 3) and out.depth.shape == (C, H, W, 1) and out.radii.shape == (C, N)


def test_gsplat_backend_refuses_settings_its_kernel_fixes():
    g = random_scene(5, 0)
    cams = cams_for_test(1)
    with pytest.raises(ValueError, match=r"fixes RasterSettings.alpha_clamp=0.999.*got 0.99;"):
        render(g, cams, backend="gsplat", settings=RasterSettings(alpha_clamp=0.99))
    with pytest.raises(ValueError, match="transmittance_eps"):
        render(g, cams, backend="gsplat", settings=RasterSettings(transmittance_eps=1e-3))
