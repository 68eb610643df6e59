"""The format object, its registry and what encoders get (imported by every format module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from common.plugins import Registry, UnknownComponent

WORLD_AXES = ("y-up right-handed (RUB: +x right, +y up, +z towards the azimuth-0 camera), "
              "object at the origin; OpenGL / three.js convention")


class FormatUnavailable(RuntimeError):
    """A format whose tool is missing (one line saying how to install it or what to drop)."""


@dataclass(frozen=True)
class SplatAsset:
    """What an encoder gets: the run's .ply bytes, its decoded Gaussians and frame 0's camera."""

    asset_id: str
    ply: bytes
    gaussians: Any  # kernels.gaussians.Gaussians
    camera: Mapping[str, Any] = field(default_factory=dict)  # frame 0: c2w (OpenGL), fovy, w, h
    prompt: str = ""
    # the export's orbit {elevation_deg, radius, fovy} and per-format options (e.g. "mesh")
    options: Mapping[str, Any] = field(default_factory=dict)
    # work shared by the formats of one asset (e.g. the mesh of glb and obj); not compared
    cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True, eq=False)
class ExportFormat:
    """One splat format of the export.

    name: the `--formats` name; files: {file in the asset folder: WebDataset member key};
    encode(SplatAsset) -> {file: bytes} (exactly `files`), or ({file: bytes}, {stat column:
    value}) for a format with `stat_columns`; card_line: the card's markdown for
    its files; index_columns: {index column: file} (default `<name>_path` -> the first file);
    check(): raises FormatUnavailable when a tool it needs is missing (called before any write);
    axes: the axis convention of the stored data; default: part of the default `--formats`.
    """

    name: str
    files: Mapping[str, str]
    encode: Callable[[SplatAsset], dict]
    card_line: str
    index_columns: Optional[Mapping[str, str]] = None
    check: Optional[Callable[[], None]] = None
    axes: str = ""
    default: bool = False
    # {index column: arrow type name ("int64", "float64", "bool")} of per-asset numbers the
    # encoder reports: its encode then returns (files, {column: value})
    stat_columns: Optional[Mapping[str, str]] = None

    def columns(self) -> dict[str, str]:
        if self.index_columns is not None:
            return dict(self.index_columns)
        return {f"{self.name}_path": next(iter(self.files))}


FORMATS: Registry[ExportFormat] = Registry("export format", "--formats")


def register(fmt: ExportFormat) -> ExportFormat:
    if not fmt.files:
        raise ValueError(f"export format {fmt.name!r} declares no files")
    return FORMATS.register(fmt)


def get(name: str) -> ExportFormat:
    return FORMATS.get(name)


def default_formats() -> tuple[str, ...]:
    return tuple(f.name for f in FORMATS.values() if f.default)


def parse_formats(spec: str | tuple | list) -> tuple[str, ...]:
    """'ply,spz' -> ('ply', 'spz'); ValueError naming an unknown format and the choices."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for f in (str(s).strip().lower() for s in parts):
        if not f:
            continue
        get(f)  # UnknownComponent (a ValueError) names the choices
        if f not in out:
            out.append(f)
    if not out:
        raise ValueError(f"--formats {spec!r} names no format; choose from "
                         f"{', '.join(FORMATS.names())}")
    return tuple(out)


def check(names: tuple[str, ...]) -> None:
    """Raise FormatUnavailable for the first chosen format whose tool is missing."""
    for n in names:
        fmt = get(n)
        if fmt.check is not None:
            fmt.check()


def member_keys(names: tuple[str, ...]) -> dict[str, str]:
    """{asset-folder file: WebDataset member key} of the chosen formats."""
    out: dict[str, str] = {}
    for n in names:
        out.update(get(n).files)
    return out


def index_columns(names: tuple[str, ...]) -> dict[str, str]:
    """{index column: asset-folder file} of the chosen formats, in --formats order."""
    out: dict[str, str] = {}
    for n in names:
        out.update(get(n).columns())
    return out


def stat_columns(names: tuple[str, ...]) -> dict[str, str]:
    """{index column: arrow type name} of the chosen formats' per-asset numbers."""
    out: dict[str, str] = {}
    for n in names:
        out.update(get(n).stat_columns or {})
    return out


def encode(names: tuple[str, ...], asset: SplatAsset,
           stats: Optional[dict] = None) -> dict[str, bytes]:
    """Every chosen format's files of one asset; formats' numbers go into `stats`."""
    files: dict[str, bytes] = {}
    for n in names:
        fmt = get(n)
        got = fmt.encode(asset)
        if isinstance(got, tuple):
            got, numbers = got
            if stats is not None:
                stats.update(numbers)
        if set(got) != set(fmt.files):
            raise RuntimeError(f"export format {n!r} wrote {sorted(got)}, declared "
                               f"{sorted(fmt.files)}")
        files.update(got)
    return files


