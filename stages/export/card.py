"""The dataset card: a Hugging Face `README.md` with YAML front matter, a metric plot and a
sample grid with captions.

Why generated: the card is the first thing a user of the dataset reads and the Hub reads its front
matter (task, size, data files). The license is the one field the tool cannot know: it is
`license: other` with `license_name` / `license_link` (the Hub asks for both with `other`) pointing
at a LICENSE.md placeholder, and a TODO for the dataset's owner.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections import Counter
from typing import Any, Sequence

import numpy as np
from PIL import Image

PLOT_FILE = "card/metrics.png"
GRID_FILE = "card/samples.png"
GRID_MAX = 16
GRID_TILE = 128
LICENSE_FILE = "LICENSE.md"
LICENSE_NAME = "sctd3d-generated-data"
LICENSE_TEXT = """# License of this dataset

TODO(dataset owner): this file is a placeholder written by `sctd3d export`. Choose the license
of this generated data (e.g. CC-BY-4.0), check the terms of the models that generated it (the
prior's license applies to its outputs), write the terms here and set `license` in README.md.
"""
_SIZE_BUCKETS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                 (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]


def size_category(n: int) -> str:
    for limit, name in _SIZE_BUCKETS:
        if n < limit:
            return name
    return "n>10M"


def metric_plot(values: dict[str, list[float]]) -> bytes | None:
    """PNG of one histogram per metric with values (None when no metric has any)."""
    present = {k: v for k, v in values.items() if v}
    if not present:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.6), squeeze=False)
    for ax, (name, vals) in zip(axes[0], present.items()):
        ax.hist(vals, bins=min(30, max(5, int(math.sqrt(len(vals))))), color="#4477aa")
        ax.set_title(f"{name} (n={len(vals)})", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def sample_grid(images: Sequence[bytes], cols: int = 4, tile: int = GRID_TILE) -> bytes | None:
    """PNG grid of up to GRID_MAX RGBA previews composited over white."""
    imgs = list(images)[:GRID_MAX]
    if not imgs:
        return None
    cols = min(cols, len(imgs))
    rows = (len(imgs) + cols - 1) // cols
    grid = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    for k, data in enumerate(imgs):
        im = Image.open(io.BytesIO(data)).convert("RGBA").resize((tile, tile), Image.BILINEAR)
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        r, c = divmod(k, cols)
        grid.paste(Image.alpha_composite(white, im).convert("RGB"), (c * tile, r * tile))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def _stats_rows(values: dict[str, list[float]]) -> list[str]:
    """The metric table: metrics with values only (no n = 0 rows)."""
    present = {k: v for k, v in values.items() if v}
    if not present:
        return ["No metric was recorded for the exported assets."]
    out = ["| metric | n | mean | min | median | max |", "| --- | --- | --- | --- | --- | --- |"]
    for name, vals in present.items():
        a = np.asarray(vals, dtype=np.float64)
        out.append(f"| {name} | {a.size} | {a.mean():.4f} | {a.min():.4f} | "
                   f"{float(np.median(a)):.4f} | {a.max():.4f} |")
    return out


def md_text(s: str) -> str:
    """A prompt as inert Markdown text: HTML-escaped, Markdown punctuation backslash-escaped,
    one line."""
    s = html.escape(" ".join(str(s).split()), quote=True)
    return re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", s)


def current_deviations(deviations: Sequence[str], iterations: int | None) -> list[str]:
    """The config's deviation notes minus those of a base config that name an iteration count
    other than the run's (deviations accumulate along `base:`; a child that changes the count
    makes the parent's note stale)."""
    if not iterations:
        return list(deviations)
    out = []
    for d in deviations:
        counts = {int(m) for m in re.findall(r"(\d+) iterations", d)}
        if counts and iterations not in counts:
            continue
        out.append(d)
    return out


def captions(samples: Sequence[tuple[str, str]], cols: int = 4) -> list[str]:
    """Markdown lines under the sample grid: each tile's position, prompt and asset id."""
    if not samples:
        return []
    cols = min(cols, len(samples))
    out = ["| tile (row, column) | prompt | asset |", "| --- | --- | --- |"]
    for k, (aid, prompt) in enumerate(samples):
        r, c = divmod(k, cols)
        out.append(f"| {r + 1}, {c + 1} | {md_text(prompt)} | `{aid}` |")
    return out


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def card_markdown(*, name: str, n_assets: int, where: str, run_counts: dict[str, int],
                  selected: int, skipped: list[dict[str, Any]], config_hashes: Counter,
                  code_versions: Counter, deviations: Sequence[str], methods: Counter,
                  metrics: dict[str, list[float]], spec: dict[str, Any],
                  formats: Sequence[tuple[str, str, Sequence[str]]],
                  shards: int, shard_size: tuple, has_plot: bool, has_grid: bool,
                  exporter_version: str, training: str = "",
                  grid_samples: Sequence[tuple[str, str]] = (),
                  axes: Sequence[tuple[str, str]] = ()) -> str:
    """The README.md text; `formats` = (name, card line, WebDataset member keys) per exported
    format (stages.export.formats)."""
    fm = [
        "---",
        "# TODO(dataset owner): choose the license of this generated data (e.g. cc-by-4.0) and",
        "# check the terms of the models that generated it; `other` is a placeholder.",
        "license: other",
        f"license_name: {LICENSE_NAME}",
        f"license_link: {LICENSE_FILE}",
        f"pretty_name: {_yaml_str(name)}",
        "task_categories:",
        "- text-to-3d",
        "tags:",
        "- gaussian-splatting",
        "- 3d",
        "- synthetic",
        "size_categories:",
        f"- {size_category(n_assets)}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: index.parquet",
        "---",
    ]
    counts = ", ".join(f"{k} {v}" for k, v in run_counts.items())
    lines = [
        f"# {name}",
        "",
        f"Synthetic text-to-3D dataset exported by `sctd3d export` ({exporter_version}): "
        f"**{n_assets} assets**, each a 3D Gaussian splat with its prompt, {spec['views']} orbit "
        f"renders" + (f" and {spec['random_views']} random training-distribution views "
                      f"(seed {spec['seed']})" if spec.get("random_views") else "")
        + f" at {spec['resolution']}x{spec['resolution']} (RGBA + depth) and camera poses.",
        "",
        "## Selection",
        "",
        f"- source run counts by status: {counts}",
        f"- filter (`--where`): `{where}` -> {selected} selected",
        f"- exported: {n_assets}; skipped: {len(skipped)}" + (" (see `skipped.json`)" if skipped
                                                              else ""),
        "",
        "## Generation",
        "",
        "- methods: " + (", ".join(f"{m} ({n})" for m, n in sorted(methods.items())) or "-"),
        "- config hash(es): " + (", ".join(f"`{h}` ({n})" for h, n in sorted(config_hashes.items()))
                                 or "-"),
        "- code version(s): " + (", ".join(f"`{v}` ({n})" for v, n in sorted(code_versions.items()))
                                 or "-"),
        *([f"- training: {training}"] if training else []),
        "- deviations from the method spec:" + ("" if deviations else " none recorded"),
        *[f"  - {d}" for d in deviations],
        "",
        "## Metric distributions (exported assets)",
        "",
        *_stats_rows(metrics),
        "",
    ]
    if has_plot:
        lines += [f"![metric distributions]({PLOT_FILE})", ""]
    if has_grid:
        lines += ["## Samples", "", f"![sample grid]({GRID_FILE})", "",
                  *captions(grid_samples), ""]
    lines += [
        "## Layout",
        "",
        "- `index.parquet`: one row per asset (id, prompt, seed, method, config hash, metrics, "
        "paths relative to this folder, number of views, shard)",
        "- `assets/<id[:2]>/<id>/`: " + ", ".join(line for _, line, _ in formats)
        + ", `images/NNN.png` (RGBA, straight alpha = accumulated opacity), `depth/NNN.png` "
        "(16-bit, millimetres: depth = value x 0.001), `preview.png`, `transforms.json` "
        "(nerfstudio, instant-ngp), `transforms_train.json` / `transforms_test.json` "
        "(Blender-style loaders; orbit views, view i is a test view when i % 8 == 0)",
        f"- `shards/shard-NNNNN.tar`: {shards} WebDataset shard(s) of up to "
        f"{shard_size[0] / 1e9:g} GB" + (f" and {shard_size[1]} assets" if shard_size[1] else "")
        + " each "
        "(`<id>.prompt.txt`, `.json`, " + "".join(f"`.{k}`, " for _, _, keys in formats for k in keys)
        + "`.transforms.json`, `.viewNNN.png`, `.depth.npz`: float16 world-unit depth of every "
        "view in frame order, 0 = none)",
        "",
        "## Cameras",
        "",
        "`transforms.json` follows nerfstudio / Blender: `fl_x, fl_y, cx, cy, w, h` in pixels, "
        "per-frame 4x4 camera-to-world `transform_matrix` with **OpenGL camera "
        "axes** (x right, y up, looking down -z; `\"camera_convention\": \"opengl\"`), world y-up, "
        "object at the origin. Random views (`view_set: random`, stems `rNNN`) have their own field "
        "of view, so intrinsics are per frame when they differ (top level otherwise). Depth is "
        "camera-z depth (along the optical axis), 16-bit millimetres: nerfstudio's default "
        "`depth_unit_scale_factor` (1e-3) and instant-ngp's `integer_depth_scale` read it as is; "
        "past 65.535 units it is stored as 0 (no depth).",
        "",
        "## Axes",
        "",
        "World: y-up, right-handed (RUB: +x right, +y up, +z towards the azimuth-0 camera), object "
        "at the origin (OpenGL / three.js).",
        *[f"- `{n}`: {a}" for n, a in axes],
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("parquet", data_files="index.parquet")["train"]',
        "",
        "import webdataset as wds",
        'ds = wds.WebDataset("shards/shard-{00000..%05d}.tar", shardshuffle=False).decode("rgba8")'
        % max(shards - 1, 0),
        "for sample in ds:",
        '    prompt = sample["prompt.txt"]; splat = sample["%s"]' % formats[0][2][0],
        '    rgba = sample["view000.png"]          # (H, W, 4) uint8, alpha kept',
        '    depth = sample["depth.npz"]["depth"]  # (views, H, W) float16, world units',
        "```",
        "",
    ]
    return "\n".join(fm + lines)
