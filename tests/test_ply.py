"""3DGS .ply export: exact round trip, field order, and clear errors for malformed files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from kernels.gaussians import Gaussians
from kernels.ply import PlyFormatError, load_ply, property_names, save_ply


def scene(n: int, deg: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (deg + 1) ** 2
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g),
                     torch.randn(n, 4, generator=g), torch.randn(n, generator=g),
                     torch.randn(n, k, 3, generator=g), sh_degree=deg)


@pytest.mark.parametrize("deg", [0, 1, 3])
def test_round_trip_is_exact(tmp_path, deg):
    g = scene(37, deg)
    path = tmp_path / "a.ply"
    save_ply(path, g)
    h = load_ply(path)
    assert h.sh_degree == deg
    for name, t in g.params().items():
        assert torch.equal(getattr(h, name), t), name


def test_field_order_and_channel_major_f_rest(tmp_path):
    g = scene(4, 1)
    buf = io.BytesIO()
    save_ply(buf, g)
    buf.seek(0)
    v = PlyData.read(buf)["vertex"]
    names = [p.name for p in v.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:18] == [f"f_rest_{i}" for i in range(9)]
    assert names[18:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == property_names(1)
    # channel-major: f_rest_0..2 are the red coefficients of bands 1..3, f_rest_3 starts green
    assert np.float32(v.data["f_rest_1"][2]) == g.sh[2, 2, 0].item()
    assert np.float32(v.data["f_rest_3"][2]) == g.sh[2, 1, 1].item()
    assert np.float32(v.data["rot_0"][1]) == g.quats[1, 0].item()  # w first
    assert np.all(v.data["nx"] == 0)


def test_truncated_file_names_file(tmp_path):
    path = tmp_path / "cut.ply"
    save_ply(path, scene(50, 0))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(PlyFormatError, match="cut.ply"):
        load_ply(path)


def test_not_a_ply(tmp_path):
    path = tmp_path / "junk.ply"
    path.write_bytes(b"hello world, not a ply\n")
    with pytest.raises(PlyFormatError, match=r"junk.ply: not a readable \.ply"):
        load_ply(path)


def test_foreign_mesh_ply_names_missing_fields(tmp_path):
    arr = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1")])
    path = tmp_path / "mesh.ply"
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))
    with pytest.raises(PlyFormatError, match=r"mesh.ply: not a 3DGS splat file.*'f_dc_0'.*'opacity'"):
        load_ply(path)


def test_bad_f_rest_count(tmp_path):
    names = property_names(0)[:9] + ["f_rest_0", "f_rest_1", "f_rest_2", "f_rest_3"] + property_names(0)[9:]
    arr = np.zeros(2, dtype=[(n, "f4") for n in names])
    path = tmp_path / "odd.ply"
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))
    with pytest.raises(PlyFormatError, match="odd.ply: 4 f_rest"):
        load_ply(path)


def test_no_vertex_element(tmp_path):
    arr = np.zeros(2, dtype=[("a", "f4")])
    path = tmp_path / "face.ply"
    PlyData([PlyElement.describe(arr, "face")]).write(str(path))
    with pytest.raises(PlyFormatError, match="face.ply: no 'vertex' element"):
        load_ply(path)
