"""WebDataset tar shards: one sample per asset, for streaming training.

Why flat member names: WebDataset groups tar members into samples by the basename up to its first
dot, so every member of an asset is `<asset_id>.<field>`: `prompt.txt`, `json` (its index row),
the splat formats' keys (`ply`, `spz`, ...), `transforms.json`, `view000.png`.. (RGBA) with
`r000` stems for random views, and `depth.npz`. Members carry fixed metadata (mtime 0, uid 0), so
a shard's bytes depend only on its assets.

Why depth as one `depth.npz` per asset: webdataset's image decoders turn a 16-bit PNG into 8-bit
or [0, 1] values; its built-in `npz` decoder (any `.decode(...)`) returns the arrays unchanged.
`depth.npz` holds `depth`: float16 (views, H, W), camera-z depth in world units, 0 = no surface,
in the order of transforms.json's frames (compressed: float16 depth maps of an object against an
empty background shrink well). Views stay PNG: `.decode("rgba8")` keeps their alpha.

Why shards by bytes: a shard is the unit a loader streams and a Hub upload stores; a byte target
(`--shard-bytes`, default 1 GB) keeps them even whatever the views and resolution. A shard closes
before the asset that would take it past the target (one asset larger than the target gets a
shard of its own); `--shard-size N` also caps the assets per shard.
"""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO, Callable, Iterable, Mapping

SHARDS_DIR = "shards"


def shard_name(k: int) -> str:
    return f"{SHARDS_DIR}/shard-{k:05d}.tar"


DEPTH_MEMBER = "depth.npz"
DEFAULT_SHARD_BYTES = 1_000_000_000  # 1 GB
TAR_OVERHEAD = 1024  # bytes per member: header + padding (an upper bound)


def plan(asset_bytes: Mapping[str, int], target_bytes: int, max_assets: int = 0) -> list[list[str]]:
    """Sorted ids in consecutive groups: a group closes before the asset that would take it past
    `target_bytes` (an asset alone over the target is a group of its own) or past `max_assets`
    assets (0 = no count limit)."""
    if target_bytes < 1:
        raise ValueError(f"--shard-bytes {target_bytes}: must be >= 1")
    groups: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for a in sorted(asset_bytes):
        b = int(asset_bytes[a])
        if cur and (size + b > target_bytes or (max_assets and len(cur) >= max_assets)):
            groups.append(cur)
            cur, size = [], 0
        cur.append(a)
        size += b
    if cur:
        groups.append(cur)
    return groups


def depth_npz(pngs: list[bytes], unit: float) -> bytes:
    """`depth.npz` of an asset from its 16-bit depth PNGs (value x unit = depth)."""
    import numpy as np
    from PIL import Image

    maps = [np.asarray(Image.open(io.BytesIO(b)), dtype=np.float64) * unit for b in pngs]
    buf = io.BytesIO()
    np.savez_compressed(buf, depth=np.stack(maps).astype(np.float16) if maps
                        else np.zeros((0, 0, 0), np.float16))
    return buf.getvalue()


def member_name(asset_id: str, rel: str, format_members: Mapping[str, str]) -> str | None:
    """Tar member name of a file of the asset folder (None: not part of a sample);
    `format_members` = {file: member key} of the exported formats (stages.export.formats)."""
    if rel.startswith("images/") and rel.endswith(".png"):
        return f"{asset_id}.view{rel[len('images/'):-4]}.png"
    if rel in format_members:
        return f"{asset_id}.{format_members[rel]}"
    if rel == "transforms.json":
        return f"{asset_id}.transforms.json"
    return None


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(fileobj: BinaryIO, samples: Iterable[tuple[str, str, bytes, list[str]]],
                read: Callable[[str, str], bytes], format_members: Mapping[str, str],
                depth_files: Callable[[str], list[str]], depth_unit: float) -> int:
    """Write samples (asset_id, prompt, index-row json, relative file paths) to `fileobj`;
    `read(asset_id, rel)` returns a file's bytes; `format_members` as in `member_name`;
    `depth_files(asset_id)` lists its depth PNGs in frame order (-> `depth.npz`).
    Streams: one asset's depth and one other file in memory at a time."""
    n = 0
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for asset_id, prompt, row_json, rels in samples:
            _add(tar, f"{asset_id}.prompt.txt", prompt.encode("utf-8"))
            _add(tar, f"{asset_id}.json", row_json.encode("utf-8"))
            for rel in sorted(rels):
                name = member_name(asset_id, rel, format_members)
                if name is not None:
                    _add(tar, name, read(asset_id, rel))
            pngs = [read(asset_id, rel) for rel in depth_files(asset_id)]
            _add(tar, f"{asset_id}.{DEPTH_MEMBER}", depth_npz(pngs, depth_unit))
            n += 1
    return n
