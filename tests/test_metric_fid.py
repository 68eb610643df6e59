"""FID: the shipped Inception loads offline; identical sets ~0; shifted sets larger; our Frechet
distance equals clean-fid's own on the same features; reference statistics are cached.

Sets here are tiny (8 images): FID of small sets is biased upward, so only relations are asserted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance as cleanfid_frechet
from PIL import Image

import fakes
from common.config import load_config
from stages.metrics.errors import MetricWeightsError
from stages.metrics.fid import (file_features, frechet_distance, frechet_distance_features,
                                load_inception, run_fid, statistics)


def make_set(folder, n=8, shift=0, seed=0):
    """Blobs of varying colour/position on white; `shift` brightens and recolours them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        im = np.full((48, 48, 3), 255, np.uint8)
        cy, cx, r = rng.integers(14, 34), rng.integers(14, 34), rng.integers(6, 12)
        yy, xx = np.mgrid[:48, :48]
        col = np.clip(rng.integers(0, 200, 3) + shift, 0, 255)
        im[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = col
        p = folder / f"{i:03d}.png"
        Image.fromarray(im).save(p)
        files.append(str(p))
    return files


@pytest.fixture(scope="module")
def inception():
    return load_inception()


@pytest.fixture(scope="module")
def feats(inception, tmp_path_factory):
    base = tmp_path_factory.mktemp("fid")
    a = file_features(make_set(base / "a"), inception)
    b = file_features(make_set(base / "b", shift=120, seed=1), inception)
    return a, b


def test_shipped_inception_loads_offline(inception, feats):
    a, _ = feats
    assert a.shape == (8, 2048) and np.isfinite(a).all()
    assert a.min() >= 0.0 and a.std() > 0  # pool3 features are post-ReLU averages
    with torch.no_grad():
        y = inception(torch.full((1, 3, 299, 299), 128.0))  # clean-fid's [0, 255] contract
    assert y.shape == (1, 2048)


def test_identical_sets_give_zero_and_shifted_sets_more(feats):
    a, b = feats
    assert abs(frechet_distance_features(a, a)) < 1e-3
    assert frechet_distance_features(a, b) > 10.0


def test_equals_cleanfid_frechet_distance(feats):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 32)), rng.normal(0.3, 1.2, size=(300, 32)) @ rng.normal(size=(32, 32))
    m1, s1 = statistics(x)
    m2, s2 = statistics(y)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(cleanfid_frechet(m1, s1, m2, s2), rel=1e-8)
    # real Inception features of tiny sets (rank-deficient covariances), first 256 dimensions so
    # clean-fid's scipy sqrtm stays CI-sized
    a, b = feats[0][:, :256], feats[1][:, :256]
    ref = float(np.real(cleanfid_frechet(*statistics(a), *statistics(b))))
    assert frechet_distance(*statistics(a), *statistics(b)) == pytest.approx(ref, rel=1e-4)
    assert frechet_distance_features(a, b) == pytest.approx(ref, rel=1e-4)


def test_small_set_form_equals_covariance_form(feats):
    a, b = feats[0][:, :512], feats[1][:, :512]  # nuclear-norm form vs eigendecomposition (n < d)
    assert frechet_distance_features(a, b) == pytest.approx(
        frechet_distance(*statistics(a), *statistics(b)), rel=1e-6)


def test_run_fid_folder_reference_and_cache(tmp_path):
    ref = tmp_path / "ref"
    files = make_set(ref)
    asset = tmp_path / "run" / "assets" / "aa" / "aa11"
    for f in files:  # the assets' frames are the reference images themselves
        (asset / "frames").mkdir(parents=True, exist_ok=True)
        (asset / "frames" / f.split("/")[-1]).write_bytes(open(f, "rb").read())
    cfg = load_config("toy.yaml", [f"metrics.fid_reference={ref}", "metrics.batch_size=4"])
    out = str(tmp_path / "run")
    r1 = run_fid(cfg, [str(asset)], ["a red cube"], out)
    assert r1["n_generated"] == r1["n_reference"] == 8 and abs(r1["fid"]) < 1e-3
    assert r1["reference_cached"] is False
    assert list((tmp_path / "run" / "metrics" / "fid_reference").glob("*.npz"))
    r2 = run_fid(cfg, [str(asset)], ["a red cube"], out)
    assert r2["reference_cached"] is True and r2["fid"] == pytest.approx(r1["fid"], abs=1e-6)
    rec = json.loads((tmp_path / "run" / "metrics" / "fid.json").read_text())
    assert rec["fid"] == r2["fid"]
    # KID is recorded beside FID (its value is checked against clean-fid below); one asset: no SE
    assert isinstance(rec["kid"], float) and rec["kid_se"] is None and rec["kid_n_images"] == 8 and rec["kid_n_assets"] == 1


def test_fid_off_writes_null_with_reason(tmp_path):
    cfg = load_config("toy.yaml", ["metrics.fid=false"])
    r = run_fid(cfg, [], [], str(tmp_path))
    assert r["fid"] is None and "metrics.fid" in r["reason"]


def test_missing_inception_fails_fast(tmp_path):
    with pytest.raises(MetricWeightsError, match=r"fid.*nope\.pt.*metrics\.fid_inception"):
        load_inception(str(tmp_path / "nope.pt"))


def test_toy_reference_is_the_ground_truth_views(tmp_path):
    """Assets that are their catalogue objects: FID against the toy reference is ~0."""
    from kernels.ply import save_ply
    from stages.render import render_asset
    from stages.toyworld.catalogue import build_object

    cfg = load_config("toy.yaml", ["render.num_views=4", "render.resolution=16", "render.video=false",
                                   "metrics.fid_reference=toy"])
    dirs = []
    for name, prompt in (("red_cube", "a red cube"), ("blue_sphere", "a blue sphere")):
        d = tmp_path / "run" / name
        d.mkdir(parents=True)
        save_ply(d / "asset.ply", build_object(name))
        render_asset(cfg, str(d), prompt)
        dirs.append(str(d))
    r = run_fid(cfg, dirs, ["a red cube", "a blue sphere"], str(tmp_path / "run"))
    assert r["n_generated"] == r["n_reference"] == 8
    assert abs(r["fid"]) < 1e-2


def test_prior_reference_samples_the_toy_sd_per_prompt(tmp_path):
    """metrics.fid_reference=prior: per distinct prompt, n DDIM+CFG samples of the configured prior,
    deterministic, each prompt's images independent of the other prompts; run_fid uses them."""
    import numpy as np
    from PIL import Image

    from stages.metrics.fid import prior_reference

    cfg = load_config("toy.yaml", ["prior.name=toy_sd", "prior.image_size=32", "metrics.fid_reference=prior",
                                   "metrics.fid_reference_per_prompt=3", "metrics.fid_reference_steps=10",
                                   "render.num_views=4", "render.resolution=16", "render.video=false"])
    files = prior_reference(cfg, ["a red cube", "a blue sphere", "a red cube"], str(tmp_path / "a"))
    assert len(files) == 6
    imgs = {f: np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) for f in files}
    assert all(x.shape == (32, 32, 3) for x in imgs.values())
    by_prompt = {"a blue sphere": [imgs[f] for f in sorted(files)[:3]], "a red cube": [imgs[f] for f in sorted(files)[3:]]}
    red = np.mean([x[..., 0].sum() - x[..., 2].sum() for x in by_prompt["a red cube"]])
    blue = np.mean([x[..., 2].sum() - x[..., 0].sum() for x in by_prompt["a blue sphere"]])
    assert red > 0 and blue > 0, (red, blue)  # the prior answers the prompts' colours
    again = prior_reference(cfg, ["a red cube"], str(tmp_path / "b"))
    assert [np.array_equal(np.asarray(Image.open(f).convert("RGB")), x)
            for f, x in zip(sorted(again), by_prompt["a red cube"])] == [True] * 3

    from kernels.ply import save_ply
    from stages.render import render_asset
    from stages.toyworld.catalogue import build_object

    d = tmp_path / "run" / "red_cube"
    d.mkdir(parents=True)
    save_ply(d / "asset.ply", build_object("red_cube"))
    render_asset(cfg, str(d), "a red cube")
    r = run_fid(cfg, [str(d)], ["a red cube"], str(tmp_path / "run"))
    assert r["reference"] == "prior" and r["n_reference"] == 3 and r["n_generated"] == 4
    assert r["fid"] is not None and np.isfinite(r["fid"]) and r["fid"] > 0


def test_distance_to_stats_equals_the_covariance_form(feats):
    from stages.metrics.fid import frechet_distance_to_stats

    a, b = feats[0][:6, :256], feats[1][:, :256]  # n < d: the small form; b's statistics as the reference
    mu, sigma = statistics(b)
    assert frechet_distance_to_stats(a, mu, sigma) == pytest.approx(
        frechet_distance(*statistics(a), mu, sigma), rel=1e-6)


def _asset_with_frames(tmp_path, files, name="aa11"):
    asset = tmp_path / "run" / "assets" / name[:2] / name
    (asset / "frames").mkdir(parents=True, exist_ok=True)
    for f in files:
        (asset / "frames" / f.split("/")[-1]).write_bytes(open(f, "rb").read())
    return asset


def _no_prior(monkeypatch):
    """Loading any prior fails the test: FID must not sample where it is not asked to."""
    import stages.priors.registry as registry

    def refuse(*a, **k):
        raise AssertionError("a prior was loaded")

    monkeypatch.setattr(registry, "load_prior", refuse)


def test_reference_stats_file_is_used_and_nothing_is_sampled(tmp_path, monkeypatch):
    """metrics.fid_reference_stats: the .npz's mu/sigma are the reference (FID of a set against its
    own statistics ~0); no prior is loaded although fid_reference says 'prior'."""
    from stages.metrics.fid import ReferenceStatsError

    _no_prior(monkeypatch)
    files = make_set(tmp_path / "ref")
    asset = _asset_with_frames(tmp_path, files)
    from stages.metrics.fid import MetricsConfig, save_reference_stats

    stats = tmp_path / "ref_stats.npz"
    assert save_reference_stats(str(tmp_path / "ref"), str(stats), MetricsConfig(batch_size=4)) == 8
    with np.load(stats) as z:
        mu, sigma = z["mu"], z["sigma"]
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    cfg = load_config("toy.yaml", ["metrics.fid_reference=prior", f"metrics.fid_reference_stats={stats}",
                                   "metrics.batch_size=4"])
    r = run_fid(cfg, [str(asset)], ["a red cube"], str(tmp_path / "run"))
    assert r["reference"] == f"stats:{stats}" and r["n_generated"] == 8
    assert r["fid"] == pytest.approx(0.0, abs=1e-2)
    shifted = _asset_with_frames(tmp_path, make_set(tmp_path / "shifted", shift=60, seed=1), "bb22")
    assert run_fid(cfg, [str(shifted)], ["a red cube"], str(tmp_path / "run"))["fid"] > 1.0

    np.savez(tmp_path / "bad.npz", mu=mu)  # no sigma
    for bad, match in ((tmp_path / "bad.npz", "'mu' and 'sigma'"), (tmp_path / "none.npz", "does not exist")):
        cfg = load_config("toy.yaml", [f"metrics.fid_reference_stats={bad}"])
        with pytest.raises(ReferenceStatsError, match=match):
            run_fid(cfg, [str(asset)], ["a red cube"], str(tmp_path / "run"))
    assert not (tmp_path / "none.npz").exists()


def test_nothing_done_is_skipped_with_a_reason_before_any_model_loads(tmp_path, monkeypatch):
    import stages.metrics.fid as fid

    _no_prior(monkeypatch)
    monkeypatch.setattr(fid, "load_inception", lambda *a, **k: pytest.fail("Inception was loaded"))
    cfg = load_config("sd21.yaml", ["metrics.fid_reference=prior"])
    r = run_fid(cfg, [], [], str(tmp_path / "run"))
    assert r["fid"] is None and r["reason"] == "no asset is done"
    assert json.loads((tmp_path / "run" / "metrics" / "fid.json").read_text())["reason"] == "no asset is done"


def test_prior_reference_is_sampled_by_the_worker_runner(tmp_path, monkeypatch):
    """With a runner (the pipeline passes its executor) the prior reference is sampled only inside
    it, from a small picklable item; the features come back by URI (the cache)."""
    import stages.metrics.fid as fid

    inside = {"now": False, "calls": []}
    real_sample = fid.prior_reference

    def guarded(cfg, prompts, folder, seed=0):
        assert inside["now"], "the prior reference was sampled outside the worker runner"
        return real_sample(cfg, prompts, folder, seed)

    monkeypatch.setattr(fid, "prior_reference", guarded)

    def runner(fn, item):
        inside["calls"].append((fn.__name__, sorted(item)))
        inside["now"] = True
        try:
            return fn(item)
        finally:
            inside["now"] = False

    cfg = load_config("toy.yaml", ["prior.name=toy_sd", "prior.image_size=32", "metrics.fid_reference=prior",
                                   "metrics.fid_reference_per_prompt=3", "metrics.fid_reference_steps=4",
                                   "metrics.batch_size=4"])
    asset = _asset_with_frames(tmp_path, make_set(tmp_path / "gen", n=4))
    r = run_fid(cfg, [str(asset)], ["a red cube", "a red cube"], str(tmp_path / "run"), run_on_worker=runner)
    assert inside["calls"] == [("prior_reference_task", ["cache", "cfg", "prompts"])]
    assert r["n_reference"] == 3 and r["n_generated"] == 4 and np.isfinite(r["fid"])
    assert r["reference_cached"] is False
    assert list((tmp_path / "run" / "metrics" / "fid_reference").glob("*.npz"))


class _RecordingExecutor:
    """Wraps the local executor and records what each map ran (a cluster's executor stand-in)."""

    def __init__(self, inner):
        self.inner, self.ran = inner, []

    def start(self):
        self.inner.start()

    def map(self, items, fn):
        items = list(items)
        self.ran.append((getattr(fn, "__name__", getattr(getattr(fn, "func", None), "__name__", "?")),
                         len(items)))
        return self.inner.map(items, fn)

    def running(self):
        return self.inner.running()

    def close(self):
        self.inner.close()


def test_pipeline_samples_the_fid_reference_through_its_executor(tmp_path, monkeypatch):
    """run_batch: the run-level FID's prior reference is one task on the run's executor (where the
    GPUs are); with nothing done, FID is skipped, no prior is loaded, and run.json says why."""
    from pathlib import Path

    import pipeline.run as prun
    from kernels.ply import save_ply
    from pipeline.executors import make_executor
    from stages.toyworld.catalogue import build_object

    made = []

    def recording(kind, **kw):
        made.append(_RecordingExecutor(make_executor(kind, **kw)))
        return made[-1]

    monkeypatch.setattr(prun, "make_executor", recording)

    def from_catalogue(cfg, prompt, seed, asset_dir, progress=False):
        if prompt == "a blue sphere":
            raise ValueError("fails on purpose")
        g = build_object(prompt)
        save_ply(str(Path(asset_dir) / "asset.ply"), g)
        return fakes.result(asset_dir, num_gaussians=g.num())

    cfg = load_config("toy.yaml", ["prior.name=toy_sd", "prior.image_size=32", "metrics.fid_reference=prior",
                                   "metrics.fid_reference_per_prompt=2", "metrics.fid_reference_steps=2",
                                   "metrics.batch_size=4", "pipeline.score=false", "pipeline.report=false",
                                   "render.video=false", "render.num_views=4", "render.resolution=16"])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    s = fakes.run_batch(from_catalogue, str(prompts), cfg, str(tmp_path / "ok"), progress=False)
    assert s.done == 1
    assert made[-1].ran == [("process_asset", 1), ("prior_reference_task", 1)]
    info = json.loads((tmp_path / "ok" / "run.json").read_text())
    assert info["fid"]["reference"] == "prior" and info["fid"]["n_reference"] == 2
    assert info["fid"]["fid"] is not None

    _no_prior(monkeypatch)
    prompts.write_text("a blue sphere\n")
    s = fakes.run_batch(from_catalogue, str(prompts), cfg, str(tmp_path / "none"), progress=False)
    assert s.failed == 1 and made[-1].ran == [("process_asset", 1)]
    info = json.loads((tmp_path / "none" / "run.json").read_text())
    assert info["status"] == "finished" and info["fid"]["reason"] == "no asset is done"


def test_a_failed_reference_task_skips_fid_with_its_reason(tmp_path):
    """No worker could make the reference (e.g. none can start): FID is skipped with the reason and
    the run goes on to its report instead of dying after all its assets are committed."""
    def no_worker(fn, item):
        raise RuntimeError("ExecutorError: no Ray worker started within 600 s")

    cfg = load_config("toy.yaml", ["metrics.fid_reference=prior", "metrics.batch_size=4"])
    asset = _asset_with_frames(tmp_path, make_set(tmp_path / "gen", n=4))
    r = run_fid(cfg, [str(asset)], ["a red cube"], str(tmp_path / "run"), run_on_worker=no_worker)
    assert r["fid"] is None and "could not be made on a worker" in r["reason"]
    assert "no Ray worker started" in json.loads((tmp_path / "run" / "metrics" / "fid.json").read_text())["reason"]


def test_kid_equals_cleanfid_and_its_se_resamples_assets():
    """KID on the full sets equals clean-fid's kernel_distance (one subset = every image); its SE
    comes from resampling whole assets: frames that move together widen it."""
    from cleanfid.fid import kernel_distance
    from stages.metrics.fid import kid_with_se

    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 1.0, (60, 32))
    gen = rng.normal(0.3, 1.0, (60, 32))
    groups = np.repeat(np.arange(10), 6)
    k = kid_with_se(gen, groups, ref, n_boot=300)
    np.random.seed(1)
    assert k["kid"] == pytest.approx(kernel_distance(gen, ref, num_subsets=1, max_subset_size=1000), rel=1e-9)
    assert k["kid_n_assets"] == 10 and k["kid_se"] > 0
    assert kid_with_se(gen, groups, ref, n_boot=300) == k                     # seeded
    # the same images where each asset's 6 frames are near-copies of one: far more spread
    clustered = np.repeat(gen[::6], 6, axis=0) + 0.01 * rng.normal(size=gen.shape)
    kc = kid_with_se(clustered, groups, ref, n_boot=300)
    per_image = kid_with_se(clustered, np.arange(60), ref, n_boot=300)
    assert kc["kid_se"] > 1.5 * per_image["kid_se"]
    # capping keeps whole assets' frames evenly
    capped = kid_with_se(gen, groups, ref, max_images=20, n_boot=50)
    assert capped["kid_n_images"] == 20 and capped["kid_n_assets"] == 10
