"""Toy-world metrics on catalogue objects: ground truth scores perfectly, wrong colour fails R-precision."""

from __future__ import annotations

import math

import pytest
import torch

from common.config import load_config
from stages.metrics.toy import ToyWorld, psnr_per_view, shifted_mse, silhouette_iou, toy_metrics
from stages.toyworld.catalogue import build_object, load_catalogue

NAMES = ["red_cube", "blue_cube", "red_sphere", "green_cone"]
PSNR_BOUND_DB = 40.0  # the ground truth itself renders identically: 100 dB (the MSE floor)


@pytest.fixture(scope="module")
def cfg():
    return load_config("toy.yaml", ["render.num_views=8", "render.resolution=24"])


@pytest.fixture(scope="module")
def world():
    """Four catalogue objects sharing words and colours (the full catalogue is the default)."""
    cat = load_catalogue()
    objs = {n: (cat.get(n).content_hash(), (lambda n=n: build_object(n, cat))) for n in NAMES}
    return ToyWorld(objs, lambda p: cat.get(p).name)


def test_ground_truth_asset_scores_perfectly(cfg, world):
    m = toy_metrics(cfg, build_object("red_cube"), "a red cube", world)
    assert m["toy_psnr"] > PSNR_BOUND_DB and m["toy_psnr_yaw"] > PSNR_BOUND_DB
    assert m["toy_iou"] == pytest.approx(1.0)
    assert m["toy_rprec"] == 1.0


def test_wrong_colour_fails_r_precision(cfg, world):
    m = toy_metrics(cfg, build_object("blue_cube"), "a red cube", world)
    assert m["toy_rprec"] == 0.0
    assert m["toy_psnr"] < 20.0
    assert m["toy_iou"] > 0.9  # same silhouette: only the colour is wrong


def test_yaw_aligned_psnr_forgives_a_turn(cfg, world):
    g = build_object("red_blue_cube")  # two-coloured: a turn changes what each view sees
    R = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # 90 deg about y = 2 orbit steps of 45 deg
    turned = g.detach_clone()
    turned.means = g.means @ R.T
    cat = load_catalogue()
    w = ToyWorld({"red_blue_cube": (cat.get("red_blue_cube").content_hash(),
                                    lambda: build_object("red_blue_cube", cat))}, lambda p: "red_blue_cube")
    m = toy_metrics(cfg, turned, "red_blue_cube", w, rprec=False)
    assert m["toy_psnr_yaw"] > m["toy_psnr"] + 5.0
    assert m["toy_psnr_yaw"] > 30.0


def test_unknown_prompt_is_a_clear_error(cfg, world):
    with pytest.raises(ValueError, match="not in the catalogue"):
        toy_metrics(cfg, build_object("red_cube"), "a purple dragon", world)


def test_helpers():
    a = torch.zeros(2, 4, 4, 3)
    b = a.clone()
    b[1] += 0.1
    p = psnr_per_view(a, b)
    assert p[0] == pytest.approx(100.0) and p[1] == pytest.approx(20.0)
    seq = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 3)
    assert int(shifted_mse(seq, torch.roll(seq, 1, 0)).argmin()) == 1  # b[i+1] = a[i]
    m = torch.zeros(1, 4, 4, 1)
    m2 = m.clone()
    m[0, :2] = 1
    m2[0, 1:3] = 1
    assert silhouette_iou(m, m2) == pytest.approx(4 / 12)
    assert math.isclose(silhouette_iou(m2 * 0, m2 * 0), 1.0)


def test_score_asset_and_evaluate_write_nulls_with_reasons(tmp_path):
    import json

    from kernels.ply import save_ply
    from pipeline.evaluate import evaluate
    from stages.metrics import score_asset

    cfg = load_config("toy.yaml", ["render.num_views=6", "render.resolution=16", "render.video=false",
                                   "metrics.metrics=[toy_psnr]", "metrics.fid=false"])
    save_ply(tmp_path / "asset.ply", build_object("red_sphere"))
    (tmp_path / "meta.json").write_text(json.dumps({"prompt": "a red sphere"}))
    s = score_asset(cfg, str(tmp_path), "a red sphere")
    assert s["toy_psnr"] > PSNR_BOUND_DB and s["toy_iou"] == pytest.approx(1.0)
    for k in ("clip_l", "image_reward", "toy_rprec"):
        assert s[k] is None and s.reasons[k] == "not in metrics.metrics"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["values"]["toy_rprec"] is None and saved["reasons"]["toy_rprec"]
    r = evaluate(str(tmp_path), cfg)  # renders the frames it needs, then scores
    assert r["assets"] == 1 and r["toy_psnr"] == pytest.approx(s["toy_psnr"])
    assert len(list((tmp_path / "frames").glob("*.png"))) == 6
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(str(tmp_path / "missing"), cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither an asset directory"):
        evaluate(str(tmp_path / "empty"), cfg)


def test_ground_truth_views_disk_cache(tmp_path):
    """A second process (simulated by clearing the in-memory cache) reads GT renders from disk."""
    from common.config import load_config
    from stages.metrics import toy as toy_mod
    from stages.toyworld.catalogue import build_object, load_catalogue

    cfg = load_config("toy.yaml", ["render.num_views=4", "render.resolution=16"])
    cat = load_catalogue()
    name = cat.objects[0].name
    calls = []

    def build():
        calls.append(1)
        return build_object(name, cat)

    toy_mod._GT_CACHE.clear()
    rgb1, a1 = toy_mod.ground_truth_views("k-" + name, build, cfg.render, tmp_path)
    toy_mod._GT_CACHE.clear()
    rgb2, a2 = toy_mod.ground_truth_views("k-" + name, build, cfg.render, tmp_path)
    assert len(calls) == 1 and torch.equal(rgb1, rgb2) and torch.equal(a1, a2)
    assert list((tmp_path / "toy_gt").glob("*.safetensors"))
