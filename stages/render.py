"""Evaluation render stage: a fixed turntable orbit of a finished asset.

Why a separate stage: metrics, the video and the report all look at the same frames, so they are
rendered once, on cameras that never depend on the training run (kernels.cameras.orbit_cameras:
`render.num_views` views evenly in azimuth starting at the front, `render.elevation_deg`, white
background by default). Outputs in the asset directory (any fsspec URI, atomic writes):
`frames/000.png ...`, `turntable.mp4` (imageio-ffmpeg; `turntable.gif` when ffmpeg is missing)
and `sheet.png` (a contact sheet of `render.sheet_views` evenly spaced frames).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image

from kernels.cameras import Cameras, orbit_cameras
from kernels.gaussians import Gaussians
from kernels.ply import load_ply
from kernels.render import RenderOutput, render
from common.config import Config, RenderConfig
from common.storage import open_storage
from stages import faults

log = logging.getLogger(__name__)

ASSET_FILE = "asset.ply"
FRAMES_DIR = "frames"
VIDEO_MP4 = "turntable.mp4"
VIDEO_GIF = "turntable.gif"
SHEET_FILE = "sheet.png"
PIXELS_PER_BATCH = 8 * 512 * 512  # bounds renderer memory; small renders go in one batch


@dataclass(frozen=True)
class RenderResult:
    """What the render stage made for one asset (URIs inside its directory)."""

    frames_uri: str
    video_uri: Optional[str]   # None when render.video is off
    sheet_uri: str
    num_frames: int

    def uris(self) -> dict[str, Optional[str]]:
        """The manifest's URI columns this stage fills."""
        return {"frames_uri": self.frames_uri, "video_uri": self.video_uri,
                "sheet_uri": self.sheet_uri}


def eval_cameras(rc: RenderConfig) -> Cameras:
    """The evaluation orbit described by the render config (also used by the toy metrics)."""
    return orbit_cameras(n=rc.num_views, elevation_deg=rc.elevation_deg, radius=rc.radius,
                         fovy=rc.fovy, width=rc.resolution, height=rc.resolution)


def render_device(rc: RenderConfig) -> torch.device:
    """CUDA when present (both backends run there), else CPU (torch backend only)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def render_batches(g: Gaussians, cams: Cameras, backend: str = "auto",
                   background: Optional[torch.Tensor] = None, batch: int = 0,
                   device: Optional[torch.device] = None) -> Iterator[RenderOutput]:
    """The renderer's outputs for `cams`, a batch of views per call (the one batched renderer of
    the project: the render stage, the toy metrics and the dataset export use it).

    `batch` = views per renderer call; 0 = as many as fit in PIXELS_PER_BATCH. `backend` "gsplat"
    on a machine without CUDA renders with "torch" (same picture; gsplat needs CUDA tensors).
    """
    batch = batch or max(1, PIXELS_PER_BATCH // (cams.width * cams.height))
    dev = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if backend == "gsplat" and dev.type != "cuda":
        backend = "torch"
    g = g.to(dev)
    bg = background.to(dev) if background is not None else None
    for i in range(0, len(cams), batch):
        yield render(g, cams[i:i + batch].to(dev), background=bg, backend=backend)


@torch.no_grad()
def render_views(g: Gaussians, cams: Cameras, rc: RenderConfig,
                 batch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb (V,H,W,3), alpha (V,H,W,1)) float32 on CPU, rendered in batches of views.

    `batch` = views per renderer call; 0 = as many as fit in PIXELS_PER_BATCH.
    """
    bg = torch.tensor(rc.background, dtype=torch.float32)
    rgbs, alphas = [], []
    for out in render_batches(g, cams, rc.backend, bg, batch, render_device(rc)):
        # identity unless a benchmark injects a fault
        rgb = faults.composite_background(out.rgb, out.alpha, bg.to(out.rgb.device))
        rgbs.append(rgb.clamp(0, 1).float().cpu())
        alphas.append(out.alpha.clamp(0, 1).float().cpu())
    return torch.cat(rgbs), torch.cat(alphas)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(..., 3) float in [0,1] -> uint8 with round-to-nearest."""
    return (rgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(frames: np.ndarray, n: int, cols: int = 4) -> np.ndarray:
    """`n` evenly spaced frames tiled `cols` wide (white padding for a short last row)."""
    V, H, W, _ = frames.shape
    n = min(n, V)
    idx = np.linspace(0, V, n, endpoint=False).astype(int)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    sheet = np.full((rows * H, cols * W, 3), 255, np.uint8)
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        sheet[r * H:(r + 1) * H, c * W:(c + 1) * W] = frames[i]
    return sheet


def encode_video(frames: np.ndarray, fps: int, tmpdir: str) -> tuple[str, str]:
    """Write frames to a local mp4 (libx264) or, without ffmpeg, a gif; returns (path, name)."""
    import imageio.v2 as imageio

    # libx264 with yuv420p needs even sizes: pad by edge replication, never resample.
    V, H, W, _ = frames.shape
    ph, pw = H % 2, W % 2
    padded = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") if (ph or pw) else frames
    path = os.path.join(tmpdir, VIDEO_MP4)
    try:
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary ships with it)

        # macro_block_size=1: keep the exact size (imageio would otherwise rescale to /16).
        with imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, pixelformat="yuv420p") as w:
            for f in padded:
                w.append_data(f)
        return path, VIDEO_MP4
    except (ImportError, RuntimeError, OSError) as exc:
        log.warning("mp4 encoding unavailable (%s); writing %s instead", exc, VIDEO_GIF)
    path = os.path.join(tmpdir, VIDEO_GIF)
    imageio.mimsave(path, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    return path, VIDEO_GIF


def load_asset(asset_dir: str) -> Gaussians:
    st = open_storage(asset_dir)
    if not st.exists(ASSET_FILE):
        raise FileNotFoundError(f"render: no {ASSET_FILE} in {asset_dir!r}; run the generate stage "
                                f"first (sctd3d generate ... --out {asset_dir})")
    buf = io.BytesIO(st.read_bytes(ASSET_FILE))
    buf.name = st.uri(ASSET_FILE)  # so a malformed file's error names it
    return load_ply(buf)


def render_asset(cfg: Config, asset_dir: str, prompt: str) -> RenderResult:
    """Render the evaluation orbit of `asset_dir/asset.ply`; returns the output URIs.

    `prompt` is recorded only in the
    log (the orbit does not depend on it); it is part of the signature so every stage is called
    the same way.
    """
    rc = cfg.render
    faults.maybe_fail(prompt)  # no-op unless a benchmark injects fail_half
    st = open_storage(asset_dir)
    g = load_asset(asset_dir)
    cams = eval_cameras(rc)
    log.info("render: %d views at %dx%d for %r (%d Gaussians)", len(cams), rc.resolution,
             rc.resolution, prompt, g.num())
    rgb, _ = render_views(g, cams, rc)
    frames = to_uint8(rgb)
    width = max(3, len(str(len(frames) - 1)))
    for i, f in enumerate(frames):
        st.write_bytes(f"{FRAMES_DIR}/{i:0{width}d}.png", png_bytes(f))
    sheet_uri = st.write_bytes(SHEET_FILE, png_bytes(contact_sheet(frames, rc.sheet_views)))
    video_uri = None
    if rc.video:
        with tempfile.TemporaryDirectory(prefix="sctd3d-video-") as tmp:
            path, name = encode_video(frames, rc.fps, tmp)
            video_uri = st.put_file(path, name)
    return RenderResult(frames_uri=st.uri(FRAMES_DIR), video_uri=video_uri, sheet_uri=sheet_uri,
                        num_frames=int(len(frames)))


def read_frames(asset_dir: str, max_views: int = 0) -> list[Image.Image]:
    """The evaluation frames as RGB PIL images, in orbit order; `max_views` > 0 picks evenly spaced."""
    st = open_storage(asset_dir)
    names = [n for n in st.ls(FRAMES_DIR) if n.lower().endswith(".png")]
    if not names:
        raise FileNotFoundError(f"no evaluation frames under {st.uri(FRAMES_DIR)!r}; run the render "
                                f"stage first (pipeline.render: true, or stages.render.render_asset)")
    if 0 < max_views < len(names):
        idx = np.linspace(0, len(names), max_views, endpoint=False).astype(int)
        names = [names[i] for i in idx]
    return [Image.open(io.BytesIO(st.read_bytes(FRAMES_DIR, n))).convert("RGB") for n in names]
