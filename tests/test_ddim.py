"""DDIM steps, segment edges and the timestep sampler against values computed in the test."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sd_alphas

from kernels.ddim import (
    TimestepParams,
    ddim_step,
    sample_timesteps,
    sample_uniform_timestep,
    segment_edges,
    warmup_ratio,
)




def test_ddim_step_matches_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=g)
    e = torch.randn(2, 4, 3, 3, generator=g)
    a1, a2 = 0.7, 0.2
    x0 = (x - math.sqrt(1 - a1) * e) / math.sqrt(a1)
    want = math.sqrt(a2) * x0 + math.sqrt(1 - a2) * e
    torch.testing.assert_close(ddim_step(x, a1, a2, e), want)


@pytest.mark.parametrize("pair", [(20, 500), (150, 979), (600, 601), (19, 211)])
def test_ddim_round_trip_exact(pair):
    a = sd_alphas()
    lo, hi = pair
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, generator=g)
    e = torch.randn(3, 4, 8, 8, generator=g)
    up = ddim_step(x, a[lo], a[hi], e)      # inversion (more noise)
    back = ddim_step(up, a[hi], a[lo], e)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(up, x)


def test_ddim_step_per_batch_alphas():
    a = sd_alphas()
    x = torch.randn(2, 1, 2, 2)
    e = torch.randn(2, 1, 2, 2)
    out = ddim_step(x, a[torch.tensor([100, 200])], a[torch.tensor([300, 50])], e)
    torch.testing.assert_close(out[0], ddim_step(x[:1], a[100], a[300], e[:1])[0])
    torch.testing.assert_close(out[1], ddim_step(x[1:], a[200], a[50], e[1:])[0])


def test_ddim_step_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha_bar"):
        ddim_step(torch.zeros(1, 1, 1, 1), 0.0, 0.5, torch.zeros(1, 1, 1, 1))


def test_segment_edges_spec_lists():
    assert segment_edges(5, "uniform") == [19, 211, 403, 595, 787, 979]
    assert segment_edges(5, "mono") == [20, 150, 311, 503, 726, 980]


def test_segment_edges_other_counts():
    assert segment_edges(1, "uniform") == [19, 979]
    assert segment_edges(1, "mono") == [20, 980]
    assert segment_edges(10, "uniform") == [19 + 96 * k for k in range(11)]
    e3 = segment_edges(3, "mono")
    lengths = [b - a for a, b in zip(e3, e3[1:])]
    assert e3[0] == 20 and e3[1] == 150 and e3[-1] == 980
    assert lengths == sorted(lengths) and len(set(lengths)) == 3   # strictly longer at high noise


def test_segment_edges_errors():
    with pytest.raises(ValueError, match="N_s=10"):
        segment_edges(10, "mono")            # 10 x 130 steps do not fit in 960
    with pytest.raises(ValueError, match="kind"):
        segment_edges(5, "log")
    with pytest.raises(ValueError, match="n_segments"):
        segment_edges(0)


def test_warmup_ratio():
    assert warmup_ratio(0, 1500) == 1.0
    assert warmup_ratio(750, 1500) == 0.5
    assert warmup_ratio(3000, 1500) == 0.0
    assert warmup_ratio(10, 0) == 0.0


def _reference_sample(it, edges, gen):
    """The spec's sampler written out again, drawing from the generator in the same order."""
    r = 1 - min(it / 1500, 1)
    lo, hi = 20 + int(480 * r), 500 + int(480 * r)
    t = int(torch.randint(lo, hi, (1,), generator=gen))
    s_m = max(e for e in edges[:-1] if e <= t) if t >= edges[0] else edges[0]
    t = min(max(t, s_m + 80), 999)
    s = int(torch.randint(s_m + 10, t - 10, (1,), generator=gen))
    return t, s, s_m, t >= 150


@pytest.mark.parametrize("kind", ["uniform", "mono"])
@pytest.mark.parametrize("it", [0, 750, 1500, 4000])
def test_sampler_matches_reference_and_ranges(kind, it):
    edges = segment_edges(5, kind)
    p = TimestepParams()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    r = 1 - min(it / 1500, 1)
    lo, hi = 20 + int(480 * r), 500 + int(480 * r)
    seen_sm = set()
    for _ in range(400):
        ts = sample_timesteps(it, edges, p, g1)
        assert (ts.t, ts.s, ts.s_m, ts.two_step) == _reference_sample(it, edges, g2)
        assert ts.s_m in edges[:-1]
        assert ts.t <= 999 and ts.t >= ts.s_m + 80
        assert ts.t >= lo and (ts.t < hi or ts.t == ts.s_m + 80)
        assert ts.s_m + 10 <= ts.s < ts.t - 10
        assert ts.two_step == (ts.t >= 150)
        seen_sm.add(ts.s_m)
    # every segment reachable from the raw t range is visited
    reachable = {max([e for e in edges[:-1] if e <= t] or [edges[0]]) for t in range(lo, hi)}
    assert seen_sm == reachable


def test_sampler_never_exceeds_cap_at_top_edge():
    # the edge case: s_m = 979 would need t > 999; s_m only from the first N_s edges
    edges = segment_edges(5, "uniform")
    gen = torch.Generator().manual_seed(3)
    p = TimestepParams(t_low=900, t_high=999, warmup_span=0)
    for _ in range(300):
        ts = sample_timesteps(0, edges, p, gen)
        assert ts.s_m == 787 and ts.t <= 999


def test_sampler_one_segment():
    edges = segment_edges(1, "uniform")
    gen = torch.Generator().manual_seed(4)
    for it in (0, 2000):
        for _ in range(200):
            ts = sample_timesteps(it, edges, TimestepParams(), gen)
            assert ts.s_m == 19 and ts.t >= 99 and 29 <= ts.s < ts.t - 10


def test_sampler_deterministic_per_generator():
    edges = segment_edges(5)
    a = [sample_timesteps(i, edges, TimestepParams(), torch.Generator().manual_seed(11)) for i in range(5)]
    b = [sample_timesteps(i, edges, TimestepParams(), torch.Generator().manual_seed(11)) for i in range(5)]
    assert a == b


def test_sampler_no_room_is_a_clear_error():
    with pytest.raises(ValueError, match="no room for s"):
        sample_timesteps(0, [19, 979], TimestepParams(t_cap=35, min_gap=80), torch.Generator().manual_seed(0))


def test_uniform_sampler_range():
    gen = torch.Generator().manual_seed(5)
    ts = [sample_uniform_timestep(20, 980, gen).t for _ in range(2000)]
    assert min(ts) >= 20 and max(ts) < 980 and min(ts) < 60 and max(ts) > 940
