"""WebDataset tar shards: one sample per asset, for streaming training.

Why flat member names: WebDataset groups tar members into samples by the basename up to its first
dot, so every member of an asset is `<asset_id>.<field>`: `prompt.txt`, `json` (its index row),
`ply`, `spz`, `transforms.json`, `view000.png`.. (RGBA), `depth000.png`.. (16-bit) with `r000`
stems for random views. Members carry fixed metadata (mtime 0, uid 0), so a shard's bytes depend
only on its assets.
"""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO, Callable, Iterable, Mapping

SHARDS_DIR = "shards"


def shard_name(k: int) -> str:
    return f"{SHARDS_DIR}/shard-{k:05d}.tar"


def plan(asset_ids: list[str], shard_size: int) -> list[list[str]]:
    """Sorted ids in consecutive groups of `shard_size`."""
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size}: must be >= 1")
    ids = sorted(asset_ids)
    return [ids[i:i + shard_size] for i in range(0, len(ids), shard_size)]


def member_name(asset_id: str, rel: str, format_members: Mapping[str, str]) -> str | None:
    """Tar member name of a file of the asset folder (None: not part of a sample);
    `format_members` = {file: member key} of the exported formats (stages.export.formats)."""
    if rel.startswith("images/") and rel.endswith(".png"):
        return f"{asset_id}.view{rel[len('images/'):-4]}.png"
    if rel.startswith("depth/") and rel.endswith(".png"):
        return f"{asset_id}.depth{rel[len('depth/'):-4]}.png"
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
                read: Callable[[str, str], bytes], format_members: Mapping[str, str]) -> int:
    """Write samples (asset_id, prompt, index-row json, relative file paths) to `fileobj`;
    `read(asset_id, rel)` returns a file's bytes; `format_members` as in `member_name`.
    Streams: one file in memory at a time."""
    n = 0
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for asset_id, prompt, row_json, rels in samples:
            _add(tar, f"{asset_id}.prompt.txt", prompt.encode("utf-8"))
            _add(tar, f"{asset_id}.json", row_json.encode("utf-8"))
            for rel in sorted(rels):
                name = member_name(asset_id, rel, format_members)
                if name is not None:
                    _add(tar, name, read(asset_id, rel))
            n += 1
    return n
