"""init.method=point_e end to end through `stages.init.point_e_points`, against a test double of the
Point-E package (it is not on PyPI and its weights cannot be downloaded here).

FakePointE mimics the exact API surface our glue calls (checked against openai/point-e's
`examples/text2pointcloud.py` and `models/download.py`): `MODEL_CONFIGS` / `model_from_config`,
`DIFFUSION_CONFIGS` / `diffusion_from_config`, `MODEL_PATHS` / `fetch_file_cached(url, progress,
cache_dir)`, `PointCloudSampler(device, models, diffusions, num_points, aux_channels, guidance_scale,
model_kwargs_key_filter)` with `sample_batch_progressive` and `output_to_point_clouds`. The fake
sampler draws its points from torch's *global* RNG, as Point-E does, so the test checks our seeding
and RNG isolation too. What it cannot check: Point-E's real samples (needs its weights)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import InitConfig
from stages import init as init_mod
from stages.init import init_gaussians, point_e_points

FAKE_URLS = {"base40M-textvec": "https://example.invalid/point-e/base_40m_textvec.pt",
             "upsample": "https://example.invalid/point-e/upsample_40m.pt"}


class PickledMarker:
    """A non-tensor object inside a checkpoint: a weights-only load must refuse it."""


class FakePointE:
    """Test double of the `point_e` package: records how it is called."""

    def __init__(self) -> None:
        self.sampler_kwargs: dict = {}
        self.model_kwargs: list = []
        self.fetched: list[tuple[str, str]] = []
        self.loaded: list[str] = []

    def install(self, monkeypatch, pickled_checkpoint: bool = False) -> None:
        fake = self

        class FakeModel(torch.nn.Module):
            def __init__(self, name: str) -> None:
                super().__init__()
                self.name = name
                self.w = torch.nn.Parameter(torch.zeros(2))

            def load_state_dict(self, sd, strict: bool = True):  # noqa: D401 - records the load
                fake.loaded.append(self.name)
                return super().load_state_dict(sd, strict)

        def fetch_file_cached(url: str, progress: bool = True, cache_dir: str | None = None, chunk_size: int = 4096):
            fake.fetched.append((url, cache_dir))
            path = Path(cache_dir) / url.split("/")[-1]
            path.parent.mkdir(parents=True, exist_ok=True)
            if pickled_checkpoint:  # a checkpoint carrying an arbitrary object: weights_only must refuse it
                torch.save({"w": torch.ones(2), "evil": PickledMarker()}, path)
            else:
                torch.save({"w": torch.ones(2)}, path)
            return str(path)

        class FakePointCloud:
            def __init__(self, coords: np.ndarray) -> None:
                self.coords = coords

        class FakePointCloudSampler:
            def __init__(self, **kwargs) -> None:
                fake.sampler_kwargs = kwargs

            def sample_batch_progressive(self, batch_size: int, model_kwargs: dict):
                fake.model_kwargs.append(model_kwargs)
                n = sum(self_n for self_n in fake.sampler_kwargs["num_points"])
                for _ in range(3):  # progressive: the last yield is the sample
                    yield torch.rand(batch_size, 6, n)  # global RNG, as Point-E

            def output_to_point_clouds(self, samples):
                return [FakePointCloud(s[:3].T.numpy() - 0.5) for s in samples]

        mods = {name: types.ModuleType(name) for name in (
            "point_e", "point_e.diffusion", "point_e.diffusion.configs", "point_e.diffusion.sampler",
            "point_e.models", "point_e.models.configs", "point_e.models.download")}
        mods["point_e.models.configs"].MODEL_CONFIGS = {"base40M-textvec": "base-cfg", "upsample": "up-cfg"}
        mods["point_e.models.configs"].model_from_config = lambda cfg, dev: FakeModel(cfg)
        mods["point_e.diffusion.configs"].DIFFUSION_CONFIGS = {"base40M-textvec": "base-diff", "upsample": "up-diff"}
        mods["point_e.diffusion.configs"].diffusion_from_config = lambda cfg: ("diffusion", cfg)
        mods["point_e.diffusion.sampler"].PointCloudSampler = FakePointCloudSampler
        mods["point_e.models.download"].MODEL_PATHS = FAKE_URLS
        mods["point_e.models.download"].fetch_file_cached = fetch_file_cached
        for name, mod in mods.items():
            monkeypatch.setitem(sys.modules, name, mod)


@pytest.fixture()
def fake_point_e(monkeypatch, tmp_path):
    monkeypatch.setenv("SCTD3D_CACHE", str(tmp_path / "cache"))
    fake = FakePointE()
    fake.install(monkeypatch)
    return fake


def test_point_e_init_calls_point_e_as_the_spec_says(fake_point_e, tmp_path):
    """base40M-textvec + upsampler, 1024 + 3072 = 4096 points, guidance 3.0 / 0.0, RGB aux channels,
    only the base model text-conditioned, weights cached under $SCTD3D_CACHE/point_e; then each point
    becomes 20 Gaussians in a 0.05 ball: 81,920 (docs/METHOD.md, "Training settings")."""
    assert init_mod.point_e_available()
    cfg = InitConfig(method="point_e")
    g = init_gaussians(cfg, "a hamburger", torch.Generator().manual_seed(0))
    kw = fake_point_e.sampler_kwargs
    assert kw["num_points"] == [1024, 3072] and kw["guidance_scale"] == [3.0, 0.0]
    assert kw["aux_channels"] == ["R", "G", "B"] and kw["model_kwargs_key_filter"] == ("texts", "")
    assert [m.name for m in kw["models"]] == ["base-cfg", "up-cfg"]
    assert kw["diffusions"] == [("diffusion", "base-diff"), ("diffusion", "up-diff")]
    assert fake_point_e.model_kwargs == [{"texts": ["a hamburger"]}]
    cache = str(tmp_path / "cache" / "point_e")
    assert fake_point_e.fetched == [(FAKE_URLS["base40M-textvec"], cache), (FAKE_URLS["upsample"], cache)]
    assert fake_point_e.loaded == ["base-cfg", "up-cfg"]
    assert torch.equal(kw["models"][0].w.detach(), torch.ones(2))  # the fetched weights were loaded
    assert g.num() == 4096 * 20


def test_point_e_points_are_seeded_converted_and_leave_the_global_rng_alone(fake_point_e):
    cfg = InitConfig(method="point_e", shape_scale=2.0)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = point_e_points(cfg, "a hamburger", torch.Generator().manual_seed(7), device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)  # Point-E's global-RNG use is forked away
    b = point_e_points(cfg, "a hamburger", torch.Generator().manual_seed(7), device="cpu")
    c = point_e_points(cfg, "a hamburger", torch.Generator().manual_seed(8), device="cpu")
    assert a.shape == (4096, 3) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # z-up Point-E coords in [-0.5, 0.5) -> y-up world, scaled by shape_scale
    assert float(a.abs().max()) <= 1.0 and float(a.abs().max()) > 0.9


def test_point_e_checkpoint_is_loaded_weights_only(monkeypatch, tmp_path):
    """A checkpoint carrying a pickled object is refused (torch.load(weights_only=True)), not run."""
    monkeypatch.setenv("SCTD3D_CACHE", str(tmp_path / "cache"))
    fake = FakePointE()
    fake.install(monkeypatch, pickled_checkpoint=True)
    with pytest.raises(Exception, match="[Ww]eights only load failed|weights_only"):
        point_e_points(InitConfig(method="point_e"), "a hamburger", torch.Generator().manual_seed(0), device="cpu")
    assert fake.loaded == []
