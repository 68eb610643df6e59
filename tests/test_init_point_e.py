"""init.method=point_e end to end through `stages.init.point_e_points`, against a test double of the
Point-E package (it is not on PyPI and its weights cannot be downloaded here), with its checkpoints
served over real HTTP from this process (issue 20, item 4: Point-E on a cluster).

FakePointE mimics the exact API surface our glue calls (checked against openai/point-e at the pinned
commit, stages/point_e_weights.POINT_E_COMMIT: `examples/text2pointcloud.py`, `models/configs.py`,
`models/download.py`, `models/transformer.py`): `MODEL_CONFIGS` / `model_from_config(config, device)`
(extra config keys reach the model's constructor: `cache_dir` is the download root of the CLIP both
models build), `DIFFUSION_CONFIGS` / `diffusion_from_config`, `MODEL_PATHS`, `PointCloudSampler(device,
models, diffusions, num_points, aux_channels, guidance_scale, model_kwargs_key_filter)` with
`sample_batch_progressive` and `output_to_point_clouds`. Point-E's own `fetch_file_cached` must not
be called (it caches error pages in the working directory). The fake sampler draws its points from
torch's *global* RNG, as Point-E does, so the test checks our seeding and RNG isolation too. What it
cannot check: Point-E's real samples and CLIP download (needs their weights)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import InitConfig
from stages import init as init_mod
from stages import point_e_weights
from stages.init import POINT_E_INSTALL, init_gaussians, point_e_points
from stages.point_e_weights import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
FILES = {"base40M-textvec": "/main/point-e/base_40m_textvec.pt", "upsample": "/main/point-e/upsample_40m.pt"}


def _ckpt(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class CheckpointServer:
    """Serves Point-E's checkpoint paths over HTTP on 127.0.0.1: `routes[path] = (status, body,
    claimed Content-Length or None)`; counts requests per path."""

    def __init__(self) -> None:
        good = _ckpt({"w": torch.ones(2)})
        self.routes = {path: (200, good, None) for path in FILES.values()}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                status, body, length = server.routes.get(self.path, (404, b"<html>not found</html>", None))
                self.send_response(status)
                self.send_header("Content-Length", str(length if length is not None else len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.urls = {name: f"http://127.0.0.1:{self.httpd.server_port}{p}" for name, p in FILES.items()}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class PickledMarker:
    """A non-tensor object inside a checkpoint: a weights-only load must refuse it."""


class FakePointE:
    """Test double of the `point_e` package: records how it is called."""

    def __init__(self) -> None:
        self.sampler_kwargs: dict = {}
        self.model_kwargs: list = []
        self.configs: list[dict] = []
        self.loaded: list[str] = []

    def install(self, monkeypatch, urls: dict) -> None:
        fake = self

        class FakeModel(torch.nn.Module):
            def __init__(self, name: str) -> None:
                super().__init__()
                self.name = name
                self.w = torch.nn.Parameter(torch.zeros(2))

            def load_state_dict(self, sd, strict: bool = True):  # noqa: D401 - records the load
                fake.loaded.append(self.name)
                return super().load_state_dict(sd, strict)

        def fetch_file_cached(*args, **kwargs):
            raise AssertionError("Point-E's own downloader was used (no status check, cwd cache)")

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
        mods["point_e.models.configs"].MODEL_CONFIGS = {"base40M-textvec": {"name": "base-cfg"},
                                                        "upsample": {"name": "up-cfg"}}

        def model_from_config(config: dict, device):
            fake.configs.append(dict(config))
            return FakeModel(config["name"])

        mods["point_e.models.configs"].model_from_config = model_from_config
        mods["point_e.diffusion.configs"].DIFFUSION_CONFIGS = {"base40M-textvec": "base-diff", "upsample": "up-diff"}
        mods["point_e.diffusion.configs"].diffusion_from_config = lambda cfg: ("diffusion", cfg)
        mods["point_e.diffusion.sampler"].PointCloudSampler = FakePointCloudSampler
        mods["point_e.models.download"].MODEL_PATHS = dict(urls)
        mods["point_e.models.download"].fetch_file_cached = fetch_file_cached
        for name, mod in mods.items():
            monkeypatch.setitem(sys.modules, name, mod)


@pytest.fixture()
def server():
    srv = CheckpointServer()
    yield srv
    srv.close()


@pytest.fixture()
def fake_point_e(monkeypatch, tmp_path, server):
    monkeypatch.setenv("SCTD3D_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # as a Ray worker's working directory
    fake = FakePointE()
    fake.install(monkeypatch, server.urls)
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
    cache = tmp_path / "cache" / "point_e"
    # both models build a CLIP ViT-L/14: its download root is the project cache, not the cwd
    assert [c.get("cache_dir") for c in fake_point_e.configs] == [str(cache), str(cache)]
    assert sorted(p.name for p in cache.glob("*.pt")) == ["base_40m_textvec.pt", "upsample_40m.pt"]
    assert not list((tmp_path / "cwd").iterdir())  # nothing in the working directory
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


def test_point_e_checkpoint_is_loaded_weights_only(fake_point_e, server):
    """A checkpoint carrying a pickled object is refused (torch.load(weights_only=True)), not run, and
    removed from the cache (the next use downloads it again)."""
    server.routes[FILES["base40M-textvec"]] = (200, _ckpt({"w": torch.ones(2), "evil": PickledMarker()}), None)
    with pytest.raises(CheckpointError, match="[Ww]eights only load failed|weights_only"):
        point_e_points(InitConfig(method="point_e"), "a hamburger", torch.Generator().manual_seed(0), device="cpu")
    assert fake_point_e.loaded == []
    left = point_e_weights.point_e_cache_dir().glob("base_40m_textvec.pt*")
    assert [p.name for p in left if not p.name.endswith(".lock")] == []


# ---- issue 20 item 4: downloads checked before use, cached once per node -------------------------
def _points():
    return point_e_points(InitConfig(method="point_e"), "a hamburger", torch.Generator().manual_seed(0),
                          device="cpu")


def test_checkpoints_download_once_and_are_checked_before_every_use(fake_point_e, server):
    _points()
    _points()
    assert server.hits == {p: 1 for p in FILES.values()}  # once per node (per cache folder)
    cache = point_e_weights.point_e_cache_dir()
    rec = (cache / "upsample_40m.pt.sha256.json").read_text()
    assert '"sha256"' in rec and str(len(server.routes[FILES["upsample"]][1])) in rec
    # a cached file that changed (same size, one byte flipped): caught by its SHA-256, fetched again
    path = cache / "upsample_40m.pt"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1, 1))  # a new mtime: no per-process shortcut
    _points()
    assert server.hits[FILES["upsample"]] == 2 and path.read_bytes() == server.routes[FILES["upsample"]][1]


@pytest.mark.parametrize("route, says", [
    ((500, b"<html>Internal Server Error</html>", None), "answered HTTP 500"),
    ((404, b"<Error><Code>BlobNotFound</Code></Error>", None), "answered HTTP 404"),
    ((200, b"x" * 1000, 5000), "downloading"),  # the connection ends before Content-Length bytes
])
def test_an_error_page_or_a_short_download_is_never_cached(fake_point_e, server, route, says):
    good = server.routes[FILES["base40M-textvec"]]
    server.routes[FILES["base40M-textvec"]] = route
    with pytest.raises(CheckpointError, match=says) as e:
        _points()
    assert "\n" not in str(e.value) and "nothing was cached" in str(e.value)
    cache = point_e_weights.point_e_cache_dir()
    assert not [p for p in cache.iterdir() if p.name.startswith(("base_40m", ".base_40m")) and
                not p.name.endswith(".lock")]
    server.routes[FILES["base40M-textvec"]] = good  # the next asset on the node downloads it
    assert _points().shape == (4096, 3)


def test_a_pinned_checksum_is_enforced(fake_point_e, server, monkeypatch):
    body = server.routes[FILES["upsample"]][1]
    monkeypatch.setitem(point_e_weights.CHECKPOINT_PINS, "upsample", (len(body), "0" * 64))
    with pytest.raises(CheckpointError, match="CHECKPOINT_PINS"):
        _points()
    assert not (point_e_weights.point_e_cache_dir() / "upsample_40m.pt").exists()
    import hashlib

    monkeypatch.setitem(point_e_weights.CHECKPOINT_PINS, "upsample", (len(body), hashlib.sha256(body).hexdigest()))
    assert _points().shape == (4096, 3)


# ---- the two `clip` modules: one `clip` (openai-clip) serves ImageReward and Point-E -------------
def test_point_e_is_pinned_and_installed_without_its_clip():
    commit = point_e_weights.POINT_E_COMMIT
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)
    assert POINT_E_INSTALL == ('pip install --no-deps openai-clip==1.0.1 '
                               f'"point-e @ git+https://github.com/openai/point-e.git@{commit}"')
    assert "CLIP.git" not in (ROOT / "ray_cluster.yaml").read_text()


def test_image_reward_and_point_e_clip_import_in_one_process():
    """The project's ImageReward metric (its own BLIP port) and the `clip` module Point-E calls
    (`clip.load(name, device=..., download_root=...)`, `clip.tokenize`, ViT-L/14 by name) in this one
    process: one `clip`, the openai-clip distribution's (POINT_E_INSTALL), no second one over it.
    (Point-E itself cannot be installed here: not on PyPI, no access to GitHub.)"""
    import importlib.metadata as md
    import inspect

    clip = pytest.importorskip("clip", reason="openai-clip is installed with Point-E (POINT_E_INSTALL)")
    from stages.metrics import image_reward  # noqa: F401 - the project's ImageReward metric

    owners = [d.metadata["Name"] for d in md.distributions() if any(str(f) == "clip/clip.py" for f in (d.files or []))]
    assert owners == ["openai-clip"], owners  # nothing else installed a `clip` over it
    assert Path(clip.__file__).parent == Path(md.distribution("openai-clip").locate_file("clip"))
    assert "download_root" in inspect.signature(clip.load).parameters
    assert "ViT-L/14" in clip.available_models()
    assert tuple(clip.tokenize(["a red cube"]).shape) == (1, 77)
