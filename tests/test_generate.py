"""The generate stage end to end on a CI-sized analytic prior: outputs, resume, NaN guard, methods.

`FakePrior` is a test double of the Prior protocol: pixel space (z = 2 rgb - 1) with Gaussian
data whose mean is a fixed target image for any non-empty prompt and grey for "" (exact eps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kernels.ply import load_ply
from common.config import load_config
from stages.generate import generate, ply_iterations, summarise_terms
from stages.losses import tv_loss
from stages.optimisation import depth_image, sample_backgrounds
from stages.priors.protocol import EmbeddingCache

RES = 16


def sd_alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class FakePrior:
    name = "fake"
    device = torch.device("cpu")
    dtype = torch.float32
    image_size = RES
    latent_shape = (3, RES, RES)
    max_prompt_tokens = 77

    def __init__(self, v: float = 0.05):
        self.alphas_cumprod = sd_alphas()
        self.v = v
        img = torch.zeros(3, RES, RES)
        img[0, 4:12, 4:12] = 1.0                        # a red square on black
        self.target = 2 * img - 1
        self.eps_calls = 0
        self._cache = EmbeddingCache(self._embed_uncached)

    def encode(self, rgb, generator=None):
        return 2 * rgb - 1

    def decode(self, z):
        return (z + 1) / 2

    def embed(self, prompts):                           # cached on the device, like the real priors
        return self._cache(prompts)

    def _embed_uncached(self, prompts):
        return torch.tensor([[1.0 if p.strip() else 0.0] for p in prompts], device=self.device)

    def count_tokens(self, prompt):
        return len(prompt.split())

    def eps(self, z_t, t, emb):
        self.eps_calls += 1
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        mu = emb.view(-1, 1, 1, 1) * self.target
        return (1 - a).sqrt() * (z_t - a.sqrt() * mu) / (a * self.v + 1 - a)


class FakeNaNPrior(FakePrior):
    """Returns NaN predictions on calls number `bad_calls` (1-based)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls = set(bad_calls)

    def eps(self, z_t, t, emb):
        out = super().eps(z_t, t, emb)
        return out * float("nan") if self.eps_calls in self.bad_calls else out


class FakeCrashPrior(FakePrior):
    """Raises (simulating a killed worker) on call `crash_at`."""

    def __init__(self, crash_at):
        super().__init__()
        self.crash_at = crash_at

    def eps(self, z_t, t, emb):
        if self.eps_calls + 1 == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().eps(z_t, t, emb)


def tiny_cfg(*extra):
    return load_config("toy.yaml", [
        "prior.image_size=16", "init.method=ball", "init.ball_num_gaussians=150",
        "generate.iterations=12", "generate.batch_views=2", "generate.checkpoint_every=4",
        "generate.save_ply_at=[6,12]", "generate.densify.start=4", "generate.densify.every=4",
        "generate.densify.end=10", "generate.sctd.warmup_iters=6", *extra])


def test_helpers():
    assert ply_iterations([2500, 5000], 600) == [300, 600]
    assert ply_iterations([300, 600], 600) == [300, 600]
    assert ply_iterations([100], 600) == [100]
    img = torch.zeros(1, 3, 4, 1)
    img[0, :, 2:] = 1.0
    assert float(tv_loss(img)) == pytest.approx(1 / 3 * 1.0 + 0.0)     # one step of 1 in 3 row pairs
    d = torch.tensor([[[[1.0], [4.0]]]])
    assert torch.equal(depth_image(d)[0, 0, 1], torch.ones(3)) and depth_image(d).shape == (1, 1, 2, 3)
    gen = torch.Generator().manual_seed(0)
    bg = sample_backgrounds(4000, 0.66, gen)
    frac = float((bg.abs().sum(1) > 0).float().mean())
    assert abs(frac - 0.66) < 0.03
    s = summarise_terms([{"grad_norm": 1.0, "t": 5}, {"grad_norm": 3.0, "t": 6}])
    assert s["grad_norm"]["mean"] == 2.0 and "t" not in s


def test_generate_writes_outputs(tmp_path):
    cfg = tiny_cfg("generate.method=sctd")
    prior = FakePrior()
    res = generate(cfg, "a red square", 3, str(tmp_path), progress=False, prior=prior)
    assert res.ok and res.iterations == 12
    for name in ("asset.ply", "asset_it6.ply", "meta.json"):
        assert (tmp_path / name).exists(), name
    # save_ply_at=[6, 12] with 12 iterations: the last save point is the end of the run, so
    # asset_it12.ply is written too and is the final asset itself, while asset_it6.ply is not
    final = (tmp_path / "asset.ply").read_bytes()
    assert (tmp_path / "asset_it12.ply").read_bytes() == final
    assert (tmp_path / "asset_it6.ply").read_bytes() != final
    meta = json.loads((tmp_path / "meta.json").read_text())
    for k in ("prompt", "seed", "method", "config_hash", "code_version", "iterations", "wall_s",
              "unet_calls", "peak_memory_mb", "terms"):
        assert k in meta, k
    assert meta["method"] == "sctd" and meta["status"] == "done" and meta["seed"] == 3
    assert meta["unet_calls"] == prior.eps_calls       # every prior call counted
    assert 3 <= meta["unet_calls_per_iteration"] <= 4
    assert {"self_norm", "cross_norm", "grad_norm"} <= set(meta["terms"])
    g = load_ply(str(tmp_path / "asset.ply"))
    assert g.num() == res.num_gaussians and torch.isfinite(g.means).all()
    assert len(list((tmp_path / "checkpoints").glob("ckpt_*.safetensors"))) == 2
    # a second call finds the finished asset and does not recompute
    p2 = FakePrior()
    again = generate(cfg, "a red square", 3, str(tmp_path), progress=False, prior=p2)
    assert again.ok and p2.eps_calls == 0


@pytest.mark.parametrize("method,calls", [("sds", (1, 1)), ("ism", (2, 7)), ("cds", (3, 4)),
                                          ("gcs", (3, 4))])
def test_every_method_runs(tmp_path, method, calls):
    cfg = tiny_cfg(f"generate.method={method}", "generate.iterations=4", "generate.checkpoint_every=0")
    prior = FakePrior()
    res = generate(cfg, "a red square", 0, str(tmp_path), progress=False, prior=prior)
    assert res.ok and res.meta["method"] == method
    assert calls[0] <= res.meta["unet_calls_per_iteration"] <= calls[1]


def test_sds_moves_render_toward_target(tmp_path):
    # the loop as a whole (render -> encode -> gradient -> trainer) must reduce the error
    from kernels.cameras import orbit_cameras
    from kernels.render import render
    from stages.init import init_gaussians

    # measured with the spec's random backgrounds (toy.yaml now turns them off): on a black-only
    # background this fake target (75% black) is met fastest by fading the whole ball, so the
    # red-square signal this test looks for needs the background augmentation
    cfg = tiny_cfg("generate.method=sds", "generate.iterations=80", "generate.checkpoint_every=0",
                   "generate.losses.tv_depth=0", "generate.augment.depth_input_p=0",
                   "generate.augment.background_random_p=0.66")
    prior = FakePrior()
    res = generate(cfg, "a red square", 0, str(tmp_path), progress=False, prior=prior)
    cams = orbit_cameras(4, 0.0, 2.75, 0.65, RES, RES)

    def redness(g):
        rgb = render(g, cams).rgb
        return float(rgb[..., 0].mean() - rgb[..., 1:].mean())

    g0 = init_gaussians(cfg.init, "a red square", torch.Generator().manual_seed(0))
    g1 = load_ply(res.asset_ply)
    assert redness(g1) > redness(g0) + 0.02      # measured: +0.012 after 40, +0.076 after 150 its


def test_resume_gives_identical_result(tmp_path):
    cfg = tiny_cfg("generate.method=sctd")
    a = generate(cfg, "a red square", 5, str(tmp_path / "a"), progress=False, prior=FakePrior())
    # crash during iteration 9 (after the checkpoint at 8), then restart
    calls_at_8 = json.loads((tmp_path / "a" / "checkpoints" / "ckpt_0000008.json").read_text())["unet_calls"]
    crash = FakeCrashPrior(crash_at=calls_at_8 + 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(cfg, "a red square", 5, str(tmp_path / "b"), progress=False, prior=crash)
    assert not (tmp_path / "b" / "asset.ply").exists()
    b = generate(cfg, "a red square", 5, str(tmp_path / "b"), progress=False, prior=FakePrior())
    assert b.resumed_from == 8
    ga, gb = load_ply(a.asset_ply), load_ply(b.asset_ply)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(getattr(ga, name), getattr(gb, name)), name
    assert a.unet_calls == b.unet_calls
    ma, mb = json.loads(Path(a.meta_path).read_text()), json.loads(Path(b.meta_path).read_text())
    assert ma["terms"] == mb["terms"]


def test_nan_is_rolled_back_and_retried(tmp_path):
    cfg = tiny_cfg("generate.method=sds", "generate.iterations=8")
    prior = FakeNaNPrior(bad_calls={6})                # SDS: one call per iteration -> iteration 6
    res = generate(cfg, "a red square", 1, str(tmp_path), progress=False, prior=prior)
    assert res.ok and res.meta["retries"] == 1
    assert res.meta["unet_calls"] == 8                 # the rolled-back iterations are not counted
    assert prior.eps_calls == 8 + 2                    # iterations 5 and 6 re-run after rollback to 4
    g = load_ply(res.asset_ply)
    assert all(torch.isfinite(t).all() for t in g.state_dict().values() if t.is_floating_point())


def test_persistent_nan_fails_with_reason(tmp_path):
    cfg = tiny_cfg("generate.method=sds", "generate.iterations=8", "generate.nan_retries=2")
    prior = FakeNaNPrior(bad_calls=set(range(3, 100)))
    res = generate(cfg, "a red square", 1, str(tmp_path), progress=False, prior=prior)
    assert not res.ok and "non-finite" in res.error and "2 retries" in res.error
    assert not (tmp_path / "asset.ply").exists()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["error"] == res.error


def test_bad_inputs(tmp_path):
    cfg = tiny_cfg()
    with pytest.raises(ValueError, match="prompt"):
        generate(cfg, "  ", 0, str(tmp_path), progress=False, prior=FakePrior())
    with pytest.raises(ValueError, match="seed"):
        generate(cfg, "a cube", -1, str(tmp_path), progress=False, prior=FakePrior())


class FakeClock:
    """Test double for the deadline clock: advances 1 s per reading, so a deadline trips at a known call."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def test_per_asset_deadline_stops_generation_and_keeps_checkpoints(tmp_path, monkeypatch):
    from common import deadline

    monkeypatch.setattr(deadline, "_clock", FakeClock())
    cfg = tiny_cfg("generate.method=sds")
    # limit() reads the clock once (t=1, deadline 7.5); each iteration's check reads it once more,
    # so the check before iteration 7 (t=8) trips: iterations 1-6 ran, the checkpoint at 4 exists.
    with deadline.limit(6.5), pytest.raises(deadline.AssetTimeout, match=r"pipeline.timeout_s\) at generate iteration 7"):
        generate(cfg, "a red square", 2, str(tmp_path), progress=False, prior=FakePrior())
    assert not (tmp_path / "asset.ply").exists()
    assert list((tmp_path / "checkpoints").glob("ckpt_0000004*"))  # progress kept for the next attempt
    res = generate(cfg, "a red square", 2, str(tmp_path), progress=False, prior=FakePrior())
    assert res.ok and res.resumed_from == 4 and res.iterations == 12


def _toy_sd_prior(cfg):
    from stages.priors.registry import load_prior
    return load_prior(cfg.prior, "cpu", toy=cfg.toy)    # the production SD code path (toy weights)


@pytest.mark.parametrize("method,prior_kind", [("sctd", "fake"), ("ism", "fake"), ("sds", "fake"),
                                               ("sds", "toy_sd")])
def test_iterations_read_the_device_once_outside_logging(tmp_path, method, prior_kind):
    # issue 13 item 7: the loop used to read device values back ~20-45 times per iteration
    # (alpha_bar lookups, DDIM alpha checks, finite checks, gradient-norm clips, loss-term floats,
    # the azimuths of device cameras); now one fused finiteness check per iteration, plus one
    # batched read of the loss terms on logging iterations.
    # issue 20 item 7: and it copied host data to the device ~7-14 times per iteration (cameras,
    # background, one timestep per prior call, SDS noise and VAE noise from CPU generators); now
    # none: cameras come from a plan copied once per chunk, timesteps index a device arange, the
    # noise generator lives on the device (tests/sync_count.py says how H2D is counted on a CPU)
    from common import deadline
    from sync_count import count_syncs

    cfg = tiny_cfg(f"generate.method={method}", "generate.log_every=4", "generate.checkpoint_every=0",
                   "generate.save_ply_at=[]", "generate.densify.start=1000")
    prior = FakePrior() if prior_kind == "fake" else _toy_sd_prior(cfg)   # weights exist before the run
    with count_syncs(deadline) as c:
        res = generate(cfg, "a red square", 3, str(tmp_path), progress=False, prior=prior)
    assert res.ok
    for it in range(1, 12):                               # the last iteration also writes the asset
        device = c.count(it, "device")
        bound = 2 if it % 4 == 0 else 1
        assert device <= bound, (it, c.where(it, "device"))
        assert c.count(it, "host") <= 6, (it, c.where(it, "host"))   # cameras, flags, timesteps
        assert c.count(it, "device", "h2d") == 0, (it, c.where(it, "device", "h2d"))
        assert c.count(it, "renderer", "h2d") == 0, (it, c.where(it, "renderer", "h2d"))
    assert c.where(1, "device") == {"__bool__@optimisation.py:check_finite": 1}
    assert c.where(4, "device")["tolist@optimisation.py:read_terms"] == 1
    # the setup copies the init's Gaussians, the plan of cameras (once) and the embeddings
    assert c.where(0, "device", "h2d")["to@optimisation.py:__init__"] == 1


def test_densifying_iterations_copy_nothing_to_the_device(tmp_path):
    # issue 20 item 7: densification (iterations 4 and 8 here) reads a few counts back, a bounded
    # number whatever the Gaussian count (no per-Gaussian loop), and copies nothing to the device
    from common import deadline
    from sync_count import count_syncs

    cfg = tiny_cfg("generate.method=sds", "generate.log_every=100", "generate.checkpoint_every=0",
                   "generate.save_ply_at=[]", "generate.densify.grad_threshold=1.0e-6",
                   "generate.densify.max_gaussians=170")
    prior = FakePrior()
    with count_syncs(deadline) as c:
        res = generate(cfg, "a red square", 3, str(tmp_path), progress=False, prior=prior)
    assert res.ok and res.num_gaussians != 150
    for it in range(1, 12):
        assert c.count(it, "device") <= (7 if it in (4, 8) else 1), (it, c.where(it, "device"))
        assert c.count(it, "device", "h2d") == 0, (it, c.where(it, "device", "h2d"))


def test_logged_terms_are_every_iterations_values(tmp_path):
    # the terms are read back in batches; meta.json must still summarise every iteration's value
    cfg = tiny_cfg("generate.method=sds", "generate.log_every=5", "generate.checkpoint_every=0")
    res = generate(cfg, "a red square", 3, str(tmp_path), progress=False, prior=FakePrior())
    t = res.meta["terms"]["sds_norm"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in t.values())
    assert t["min"] <= t["first10pct"] <= t["max"] and t["min"] < t["max"]   # 12 distinct values


def test_meta_records_the_training_curve_at_each_logging_iteration(tmp_path):
    """meta.json's `curve` (what the report draws): one point per logging iteration with the Gaussian
    count and the terms logged there, equal to the log's values."""
    cfg = tiny_cfg("generate.method=sds", "generate.log_every=5", "generate.checkpoint_every=0")
    res = generate(cfg, "a red square", 3, str(tmp_path), progress=False, prior=FakePrior())
    c = json.loads((tmp_path / "meta.json").read_text())["curve"]
    assert c["it"] == [5, 10, 12]                      # every 5th iteration and the last
    assert c["gaussians"][-1] == res.num_gaussians
    assert len(c["sds_norm"]) == 3 and all(math.isfinite(v) and v > 0 for v in c["sds_norm"])
    t = res.meta["terms"]["sds_norm"]
    assert all(t["min"] <= v <= t["max"] for v in c["sds_norm"])


class CountingTokensPrior(FakePrior):
    def __init__(self):
        super().__init__()
        self.token_counts = 0

    def count_tokens(self, prompt):
        self.token_counts += 1
        return super().count_tokens(prompt)


def test_prompt_is_tokenized_once_not_every_iteration(tmp_path):
    prior = CountingTokensPrior()
    cfg = tiny_cfg("generate.method=sds", "generate.checkpoint_every=0")
    assert generate(cfg, "a red square, tokenized once", 0, str(tmp_path), progress=False, prior=prior).ok
    assert prior.token_counts == 1                       # was one tokenizer call per iteration (12)
