"""Training sampler ranges, the widening schedule, determinism, and the evaluation orbit."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.cameras import (CameraSamplerParams, look_at, orbit_cameras, sample_training_cameras,
                             widened_ranges)


def test_look_at_opencv_axes():
    vm = look_at(torch.tensor([[0.0, 0.0, 4.0]]), torch.zeros(1, 3), torch.tensor([0.0, 1.0, 0.0]))[0]
    # origin is 4 units straight ahead (+z); world +x is camera right, world +y is camera up (-y)
    torch.testing.assert_close(vm[:3, :3] @ torch.zeros(3) + vm[:3, 3], torch.tensor([0.0, 0.0, 4.0]))
    torch.testing.assert_close(vm[:3, :3] @ torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 0, 0]))
    torch.testing.assert_close(vm[:3, :3] @ torch.tensor([0, 1.0, 0]), torch.tensor([0, -1.0, 0]))
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([[0.0, 4.0, 0.0]]), torch.zeros(1, 3), torch.tensor([0.0, 1.0, 0.0]))


def test_sampler_ranges_before_widening():
    p = CameraSamplerParams(jitter_center=0.0, jitter_target=0.0, jitter_up=0.0)
    c = sample_training_cameras(2000, 32, 32, 0, p, torch.Generator().manual_seed(0))
    assert len(c) == 2000 and c.viewmats.shape == (2000, 4, 4)
    assert 5.2 <= c.radius.min() and c.radius.max() <= 5.5 and c.radius.max() > 5.45
    assert 0.32 <= c.fovy.min() and c.fovy.max() <= 0.60
    assert -15.0 - 1e-4 <= c.elevation_deg.min() and c.elevation_deg.max() <= 45.0 + 1e-4
    assert c.azimuth_deg.min() >= -180 and c.azimuth_deg.max() < 180 and c.azimuth_deg.min() < -170
    # no jitter: camera centres sit exactly at the sampled spherical coordinates
    torch.testing.assert_close(c.centers.norm(dim=-1), c.radius, atol=1e-4, rtol=0)
    el = torch.rad2deg(torch.asin(c.centers[:, 1] / c.radius))
    torch.testing.assert_close(el, c.elevation_deg, atol=1e-2, rtol=0)
    az = torch.rad2deg(torch.atan2(c.centers[:, 0], c.centers[:, 2]))
    torch.testing.assert_close(torch.cos(torch.deg2rad(az - c.azimuth_deg)), torch.ones(2000), atol=1e-4, rtol=0)
    # focal length matches fovy
    torch.testing.assert_close(c.Ks[:, 1, 1], 16 / torch.tan(c.fovy / 2))


def test_widening_schedule():
    p = CameraSamplerParams()
    assert widened_ranges(0, p) == widened_ranges(499, p) == ((5.2, 5.5), (0.32, 0.60))
    r1, f1 = widened_ranges(500, p)
    assert r1 == pytest.approx((5.2 * 0.95, 5.5 * 0.95)) and f1 == pytest.approx((0.32 * 0.75, 0.60))
    assert widened_ranges(999, p) == widened_ranges(500, p)
    r2, f2 = widened_ranges(1000, p)
    assert r2[0] < r1[0] and f2[0] < f1[0]
    rf, ff = widened_ranges(10_000, p)
    assert rf == pytest.approx((3.5, 5.0)) and ff == pytest.approx((0.16, 0.60))
    # monotone toward the final ranges, never beyond
    prev = widened_ranges(0, p)
    for it in range(500, 6000, 500):
        cur = widened_ranges(it, p)
        assert cur[0][0] <= prev[0][0] and cur[0][0] >= 3.5 and cur[1][0] >= 0.16
        prev = cur
    c = sample_training_cameras(500, 16, 16, 10_000, p, torch.Generator().manual_seed(1))
    assert c.radius.min() >= 3.5 and c.radius.min() < 3.6 and c.fovy.min() < 0.18


def test_sampler_is_deterministic_and_jitters():
    p = CameraSamplerParams()
    a = sample_training_cameras(8, 16, 16, 0, p, torch.Generator().manual_seed(5))
    b = sample_training_cameras(8, 16, 16, 0, p, torch.Generator().manual_seed(5))
    c = sample_training_cameras(8, 16, 16, 0, p, torch.Generator().manual_seed(6))
    assert torch.equal(a.viewmats, b.viewmats) and not torch.equal(a.viewmats, c.viewmats)
    # jitter moves the target off the origin: the origin is no longer exactly on the optical axis
    origin_cam = a.viewmats[:, :3, 3]
    assert (origin_cam[:, :2].abs().max()) > 1e-3
    with pytest.raises(ValueError, match="n=0"):
        sample_training_cameras(0, 16, 16, 0, p, torch.Generator())
    with pytest.raises(ValueError, match=r"radius_range=\(2.0, 1.0\)"):
        CameraSamplerParams(radius_range=(2.0, 1.0))


def test_orbit():
    c = orbit_cameras(120, elevation_deg=15.0, radius=3.5, width=32, height=24)
    assert len(c) == 120 and c.width == 32 and c.height == 24
    assert c.azimuth_deg[0] == 0.0 and c.azimuth_deg.min() >= -180 and c.azimuth_deg.max() < 180
    torch.testing.assert_close(c.centers.norm(dim=-1), torch.full((120,), 3.5))
    torch.testing.assert_close(c.centers[:, 1], torch.full((120,), 3.5 * math.sin(math.radians(15))))
    torch.testing.assert_close(c.centers[0], torch.tensor([0.0, 3.5 * math.sin(math.radians(15)),
                                                           3.5 * math.cos(math.radians(15))]))
    # every view looks at the origin: it projects to the image centre
    o = c.viewmats[:, :3, 3]
    uv = (c.Ks @ o[:, :, None])[:, :2, 0] / o[:, 2:3]
    torch.testing.assert_close(uv, torch.tensor([16.0, 12.0]).expand(120, 2), atol=1e-3, rtol=0)
    assert len(c[3:5]) == 2 and len(c.to("cpu")) == 120
