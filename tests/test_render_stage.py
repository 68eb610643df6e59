"""Evaluation render stage: frame count, a playable video, the contact sheet, URIs."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from kernels.gaussians import Gaussians, rgb_to_sh0
from kernels.ply import save_ply
from common.config import load_config
from stages.render import contact_sheet, read_frames, render_asset


def red_blob(n: int = 60, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.3
    rgb = torch.tensor([0.9, 0.1, 0.1]).expand(n, 3)
    return Gaussians(means, torch.full((n, 3), -2.0), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                     torch.full((n,), 3.0), rgb_to_sh0(rgb)[:, None, :].clone())


def tiny_cfg(views: int, res: int = 16, video: bool = True):
    return load_config("toy.yaml", [f"render.num_views={views}", f"render.resolution={res}",
                                    f"render.video={'true' if video else 'false'}", "render.sheet_views=4"])


def test_writes_frames_video_and_sheet(tmp_path):
    save_ply(tmp_path / "asset.ply", red_blob())
    cfg = tiny_cfg(views=10, res=15)  # odd size: the mp4 path must cope
    out = render_asset(cfg, str(tmp_path), "a red blob")
    frames = sorted((tmp_path / "frames").glob("*.png"))
    assert len(frames) == 10 == out.num_frames
    first = np.asarray(Image.open(frames[0]))
    assert first.shape == (15, 15, 3)
    assert (first[0, 0] == 255).all(), "white background expected at the corner"
    c = first[7, 7].astype(int)
    assert c[0] > 150 and c[1] < 100 and c[2] < 100, f"centre should be red, got {c}"
    assert out.frames_uri.endswith("frames")
    assert out.video_uri.endswith(("turntable.mp4", "turntable.gif"))
    reader = imageio.get_reader(out.video_uri)
    n = sum(1 for _ in reader)
    reader.close()
    assert n == 10
    sheet = np.asarray(Image.open(out.sheet_uri))
    assert sheet.shape == (15, 60, 3)
    assert len(read_frames(str(tmp_path), max_views=5)) == 5


def test_no_video_when_disabled_and_missing_asset_is_clear(tmp_path):
    save_ply(tmp_path / "asset.ply", red_blob())
    out = render_asset(tiny_cfg(views=3, video=False), str(tmp_path), "p")
    assert out.video_uri is None and not (tmp_path / "turntable.mp4").exists()
    with pytest.raises(FileNotFoundError, match="asset.ply"):
        render_asset(tiny_cfg(views=3), str(tmp_path / "nothing"), "p")


def test_contact_sheet_layout():
    frames = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(8)])
    sheet = contact_sheet(frames, 6, cols=4)
    assert sheet.shape == (4, 12, 3)
    assert sheet[0, 3, 0] == 1  # second tile shows frame 1 (evenly spaced: 0,1,2,4,5,6)
    assert sheet[2, 0, 0] == 5 and (sheet[2, 6:] == 255).all()
