"""Export formats: one module per splat format, each registering an `ExportFormat`.

Why a registry: `.ply`, `.spz`, SOG, `.splat`, the offline HTML viewer (and later meshes) plug in
the same way, and a user adds one without editing sctd3d: a module that calls
`register(ExportFormat(...))`, named in `$SCTD3D_PLUGINS` or a `sctd3d.plugins` entry point
(common/plugins.py). `parse_formats` (the `--formats` option), the asset builder, the index, the
shards and the card read formats only from here.

Axis conventions (also written into transforms.json, export.json and the card): sctd3d's world is
y-up, right-handed, object at the origin, camera of azimuth 0 on +z (= RUB, the OpenGL / three.js
convention). Each format stores the axes of its own ecosystem; `ExportFormat.axes` says which.
"""

from __future__ import annotations

from stages.export.formats.base import (FORMATS, WORLD_AXES, ExportFormat, FormatUnavailable,
                                        SplatAsset, UnknownComponent, check, default_formats,
                                        encode, get, index_columns, member_keys, parse_formats,
                                        register, stat_columns)

__all__ = ["ExportFormat", "FORMATS", "FormatUnavailable", "SplatAsset", "UnknownComponent",
           "WORLD_AXES", "check", "default_formats", "encode", "get", "index_columns",
           "member_keys", "parse_formats", "register", "stat_columns"]

# the built-in formats (each module registers itself)
from stages.export.formats import ply, spz, splat, sog, html, glb, obj  # noqa: E402,F401
