"""Toy world: catalogue parsing and validation, deterministic Gaussians, cached views."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from kernels.cameras import orbit_cameras
from kernels.render import render
from stages.toyworld import views as views_mod
from stages.toyworld.catalogue import (SHIPPED_CATALOGUE, CatalogueError, build_object, format_catalogue,
                                       list_objects, load_catalogue, parse_catalogue)
from stages.toyworld.views import ViewParams, catalogue_views, object_views

SMALL = ViewParams(num_views=6, resolution=12)


def test_shipped_catalogue_is_rich_and_shares_words():
    objs = list_objects()
    assert len(objs) >= 16
    shapes = {"cube", "sphere", "cone", "torus"}
    colours = {"red", "green", "blue", "yellow"}
    prompts = {o.prompt for o in objs}
    for s in shapes:
        for c in colours:
            assert f"a {c} {s}" in prompts
    kinds = {next(iter(p.color)) for o in objs for p in o.parts}
    assert {"solid", "split", "stripes"} <= kinds
    assert any(len(o.parts) > 1 for o in objs)  # a union
    assert [o.index for o in objs] == list(range(len(objs)))


def test_lookup_by_name_prompt_and_suffix():
    cat = load_catalogue()
    assert cat.get("red_cube").prompt == "a red cube"
    assert cat.get("A Red Cube").name == "red_cube"
    assert cat.get("a red cube, back view").name == "red_cube"
    with pytest.raises(CatalogueError, match="a purple cube.*not in the catalogue"):
        cat.get("a purple cube")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["objects"][0]["parts"][0].update(primitive="pyramid"), "pyramid"),
    (lambda d: d["objects"][0]["parts"][0].update(color="mauve"), "mauve"),
    (lambda d: d["objects"].append(dict(d["objects"][0])), "duplicate"),
    (lambda d: d["objects"][0]["parts"][0].update(size=-1), "size"),
    (lambda d: d["objects"][0]["parts"][0].update(color={"split": {"axis": "w", "colors": ["red", "blue"]}}), "axis"),
    (lambda d: d["objects"][0].update(parts=[]), "parts"),
])
def test_bad_catalogue_errors_name_the_value(mutate, match):
    d = yaml.safe_load(SHIPPED_CATALOGUE.read_text())
    mutate(d)
    with pytest.raises(CatalogueError, match=match):
        parse_catalogue(d, "bad.yaml")


def test_missing_catalogue_file(tmp_path):
    with pytest.raises(CatalogueError, match="does not exist"):
        load_catalogue(tmp_path / "nope.yaml")


def test_format_catalogue_lists_every_object():
    text = format_catalogue()
    for o in list_objects():
        assert o.name in text and o.prompt in text
    assert f"{len(list_objects())} objects" in text


def test_build_object_is_deterministic_with_known_geometry_and_colour():
    a, b = build_object("a red sphere"), build_object("red_sphere")
    assert torch.equal(a.means, b.means) and torch.equal(a.sh, b.sh)
    r = load_catalogue().get("red_sphere").parts[0].params["radius"]
    assert torch.allclose(a.means.norm(dim=1), torch.full((a.num(),), r), atol=1e-5)
    assert torch.allclose(a.colors, torch.tensor([0.85, 0.12, 0.10]).expand(a.num(), 3), atol=1e-5)
    assert a.num() == 2000 and build_object("red_sphere", num_gaussians=300).num() == 300
    cube = build_object("red_cube")
    assert cube.means.abs().max() <= 0.95 / 2 + 1e-5


def test_split_colour_and_union():
    g = build_object("red_blue_cube")
    front, back = g.means[:, 2] > 0.01, g.means[:, 2] < -0.01
    assert torch.allclose(g.colors[front].mean(0), torch.tensor([0.85, 0.12, 0.10]), atol=1e-4)
    assert torch.allclose(g.colors[back].mean(0), torch.tensor([0.15, 0.30, 0.90]), atol=1e-4)
    m = build_object("mushroom")
    white = (m.colors - 0.92).abs().max(dim=1).values < 1e-4
    assert 0 < int(white.sum()) < m.num()
    assert m.means[white, 1].mean() < m.means[~white, 1].mean()  # stem under the cap


def test_two_coloured_object_views_differ_by_side():
    g = build_object("red_blue_cube", num_gaussians=800)
    cams = orbit_cameras(n=2, elevation_deg=0.0, radius=2.75, fovy=0.65, width=16, height=16)  # az 0, -180
    rgb = render(g, cams).rgb
    mask = rgb.sum(-1) > 0.3
    front, back = rgb[0][mask[0]].mean(0), rgb[1][mask[1]].mean(0)
    assert front[0] > 0.6 and front[2] < 0.3  # red from the front
    assert back[2] > 0.6 and back[0] < 0.3  # blue from behind


def test_views_are_deterministic_cached_and_carry_azimuths(tmp_path, monkeypatch):
    v1 = object_views("a green cone", SMALL, cache_dir=tmp_path)
    assert v1.images.shape == (6, 12, 12, 3) and v1.images.dtype == torch.float32
    assert 0.0 <= float(v1.images.min()) and float(v1.images.max()) <= 1.0
    assert float(v1.images.max()) > 0.3  # the object is in frame
    assert v1.azimuth_deg.shape == (6,) and bool(((v1.azimuth_deg >= -180) & (v1.azimuth_deg < 180)).all())
    files = list((tmp_path / "toy_views").glob("green_cone-*.safetensors"))
    assert len(files) == 1
    fresh = views_mod.render_views(load_catalogue().get("green_cone"), SMALL, load_catalogue())
    assert torch.equal(fresh.images, v1.images)  # deterministic rendering

    def boom(*a, **k):
        raise AssertionError("re-rendered although cached")

    monkeypatch.setattr(views_mod, "render_views", boom)
    v2 = object_views("green_cone", SMALL, cache_dir=tmp_path)
    assert torch.equal(v1.images, v2.images) and torch.equal(v1.azimuth_deg, v2.azimuth_deg)
    with pytest.raises(AssertionError, match="re-rendered"):  # other params -> other key
        object_views("green_cone", ViewParams(num_views=5, resolution=12), cache_dir=tmp_path)


def test_cache_dir_from_environment_and_corrupt_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SCTD3D_CACHE", str(tmp_path))
    assert views_mod.default_cache_dir() == tmp_path
    v = catalogue_views(SMALL, names=["blue_torus"])[0]
    f = next((tmp_path / "toy_views").glob("blue_torus-*.safetensors"))
    f.write_bytes(b"garbage")
    again = object_views("blue_torus", SMALL)
    assert torch.equal(again.images, v.images)
