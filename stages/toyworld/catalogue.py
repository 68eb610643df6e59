"""The toy-world catalogue: objects as data (YAML), built into 3D Gaussians with known colour.

Why data and not code: a user adds an object by adding a YAML entry. Every object is a union of
primitives sampled uniformly on their surfaces; the generator is seeded from the object name, so
`build_object` returns bit-identical Gaussians on every call and machine.
"""

from __future__ import annotations

from common.errors import UserError
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from kernels.gaussians import Gaussians, rgb_to_sh0

SHIPPED_CATALOGUE = Path(__file__).resolve().parent / "catalogue.yaml"
PRIMITIVES: dict[str, dict[str, float]] = {  # primitive -> {parameter: default}
    "cube": {"size": 1.0},
    "sphere": {"radius": 0.5},
    "cylinder": {"radius": 0.4, "height": 1.0},
    "cone": {"radius": 0.5, "height": 1.0},
    "torus": {"major_radius": 0.5, "minor_radius": 0.2},
}
_VIEW_SUFFIX = re.compile(r",\s*(front|side|back|overhead|bottom) view\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def prompt_key(name_or_prompt: str) -> str:
    """What a prompt is looked up by: lowercased, trimmed, a trailing ', front view' etc. removed
    (toy_exact's "tokenizer": stages.priors.tokens asks it whether case matters)."""
    return _VIEW_SUFFIX.sub("", str(name_or_prompt).strip().lower()).strip()


class CatalogueError(UserError, ValueError):
    """A malformed catalogue file or an unknown object; the message names the value and a fix."""


@dataclass(frozen=True)
class PartSpec:
    primitive: str
    params: dict[str, float]
    color: dict[str, Any]  # {"solid": rgb} | {"split": {...}} | {"stripes": {...}} with rgb lists
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotate_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translate: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    prompt: str
    parts: tuple[PartSpec, ...]
    num_gaussians: int
    scale_factor: float
    opacity: float
    index: int = 0

    def content_hash(self) -> str:
        """Hash of everything that determines the object's Gaussians (for view caches)."""
        d = {"parts": [p.__dict__ for p in self.parts], "n": self.num_gaussians,
             "sf": self.scale_factor, "op": self.opacity, "name": self.name}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Catalogue:
    objects: list[ObjectSpec]
    source: str
    by_key: dict[str, ObjectSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for o in self.objects:
            self.by_key[o.name.lower()] = o
            self.by_key[o.prompt.lower()] = o

    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    def prompts(self) -> list[str]:
        return [o.prompt for o in self.objects]

    def get(self, name_or_prompt: str) -> ObjectSpec:
        """Look up by name or prompt (case-insensitive; a trailing ', front view' etc. is ignored)."""
        key = prompt_key(name_or_prompt)
        if key in self.by_key:
            return self.by_key[key]
        import difflib

        near = difflib.get_close_matches(key, list(self.by_key), n=3)
        hint = f"; did you mean {near}?" if near else ""
        raise CatalogueError(
            f"toy object {name_or_prompt!r} is not in the catalogue {self.source}{hint} "
            f"(`sctd3d toy list` prints the {len(self.objects)} objects; add one to the YAML to extend it)"
        )

    def find(self, name_or_prompt: str) -> ObjectSpec | None:
        try:
            return self.get(name_or_prompt)
        except CatalogueError:
            return None


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------
def _err(src: str, where: str, msg: str) -> CatalogueError:
    return CatalogueError(f"{src}: {where}: {msg}")


def _rgb(value: Any, colors: dict[str, list[float]], src: str, where: str) -> list[float]:
    if isinstance(value, str):
        if value not in colors:
            raise _err(src, where, f"unknown colour {value!r}; define it under `colors:` "
                                   f"(known: {sorted(colors)}) or give [r, g, b] in 0..1")
        return list(colors[value])
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(x, (int, float)) and 0.0 <= x <= 1.0 for x in value)):
        return [float(x) for x in value]
    raise _err(src, where, f"colour {value!r} must be a colour name or [r, g, b] with values in 0..1")


def _vec3(value: Any, default: float, src: str, where: str) -> tuple[float, float, float]:
    if value is None:
        return (default, default, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return tuple(float(x) for x in value)  # type: ignore[return-value]
    raise _err(src, where, f"expected a number or [x, y, z], got {value!r}")


def _color_spec(value: Any, colors: dict, src: str, where: str) -> dict[str, Any]:
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in ("split", "stripes"):
            raise _err(src, where, f"pattern {value!r} must be {{split: ...}} or {{stripes: ...}}")
        kind, body = next(iter(value.items()))
        if not isinstance(body, dict):
            raise _err(src, f"{where}.{kind}", f"expected a mapping, got {body!r}")
        axis = body.get("axis")
        if axis not in ("x", "y", "z"):
            raise _err(src, f"{where}.{kind}.axis", f"got {axis!r}; use x, y or z")
        cols = body.get("colors")
        if not isinstance(cols, list) or len(cols) < 2 or (kind == "split" and len(cols) != 2):
            raise _err(src, f"{where}.{kind}.colors",
                       f"got {cols!r}; split needs exactly 2 colours, stripes at least 2")
        out: dict[str, Any] = {"axis": "xyz".index(axis),
                               "colors": [_rgb(c, colors, src, f"{where}.{kind}.colors") for c in cols]}
        if kind == "stripes":
            count = body.get("count", 4)
            if not isinstance(count, int) or count < 2:
                raise _err(src, f"{where}.stripes.count", f"got {count!r}; use an integer >= 2")
            out["count"] = count
        return {kind: out}
    return {"solid": _rgb(value, colors, src, where)}


def _part(raw: Any, colors: dict, src: str, where: str) -> PartSpec:
    if not isinstance(raw, dict):
        raise _err(src, where, f"a part must be a mapping, got {raw!r}")
    prim = raw.get("primitive")
    if prim not in PRIMITIVES:
        raise _err(src, f"{where}.primitive", f"got {prim!r}; choose one of {sorted(PRIMITIVES)}")
    allowed = {"primitive", "color", "transform", *PRIMITIVES[prim]}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise _err(src, where, f"unknown keys {extra} for a {prim}; allowed: {sorted(allowed)}")
    params = {}
    for k, default in PRIMITIVES[prim].items():
        v = raw.get(k, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise _err(src, f"{where}.{k}", f"got {v!r}; must be a positive number")
        params[k] = float(v)
    if prim == "torus" and params["minor_radius"] >= params["major_radius"]:
        raise _err(src, where, f"torus minor_radius {params['minor_radius']} must be < major_radius "
                               f"{params['major_radius']}")
    if "color" not in raw:
        raise _err(src, f"{where}.color", "missing; give a colour name, [r, g, b] or a pattern")
    tr = raw.get("transform") or {}
    if not isinstance(tr, dict) or set(tr) - {"scale", "rotate_deg", "translate"}:
        raise _err(src, f"{where}.transform", f"got {tr!r}; allowed keys: scale, rotate_deg, translate")
    scale = _vec3(tr.get("scale"), 1.0, src, f"{where}.transform.scale")
    if min(scale) <= 0:
        raise _err(src, f"{where}.transform.scale", f"got {scale}; scales must be > 0")
    return PartSpec(prim, params, _color_spec(raw["color"], colors, src, f"{where}.color"), scale,
                    _vec3(tr.get("rotate_deg"), 0.0, src, f"{where}.transform.rotate_deg"),
                    _vec3(tr.get("translate"), 0.0, src, f"{where}.transform.translate"))


def parse_catalogue(data: Any, source: str = "<catalogue>") -> Catalogue:
    """Validate a parsed YAML document into a `Catalogue` (errors name the entry and the fix)."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list) or not data["objects"]:
        raise CatalogueError(f"{source}: expected a mapping with a non-empty `objects:` list")
    colors = data.get("colors") or {}
    if not isinstance(colors, dict):
        raise _err(source, "colors", f"expected a mapping name -> [r, g, b], got {colors!r}")
    for k, v in colors.items():
        _rgb(v, {}, source, f"colors.{k}")
    d = data.get("defaults") or {}
    n_default = d.get("num_gaussians", 2000)
    sf, op = d.get("scale_factor", 0.9), d.get("opacity", 0.95)
    if not isinstance(n_default, int) or n_default < 1:
        raise _err(source, "defaults.num_gaussians", f"got {n_default!r}; use an integer >= 1")
    if not isinstance(sf, (int, float)) or sf <= 0:
        raise _err(source, "defaults.scale_factor", f"got {sf!r}; use a positive number")
    if not isinstance(op, (int, float)) or not 0 < op < 1:
        raise _err(source, "defaults.opacity", f"got {op!r}; use a number in (0, 1)")
    objects: list[ObjectSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["objects"]):
        where = f"objects[{i}]"
        if not isinstance(raw, dict):
            raise _err(source, where, f"expected a mapping, got {raw!r}")
        name, prompt = raw.get("name"), raw.get("prompt")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _err(source, f"{where}.name", f"got {name!r}; use letters, digits and underscores")
        where = f"objects[{i}] ({name})"
        if not isinstance(prompt, str) or not prompt.strip():
            raise _err(source, f"{where}.prompt", f"got {prompt!r}; give a non-empty text prompt")
        for key in (name.lower(), prompt.strip().lower()):
            if key in seen:
                raise _err(source, where, f"duplicate name or prompt {key!r}; each must be unique")
            seen.add(key)
        parts = raw.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _err(source, f"{where}.parts", "expected a non-empty list of primitives")
        n = raw.get("num_gaussians", n_default)
        if not isinstance(n, int) or n < len(parts):
            raise _err(source, f"{where}.num_gaussians", f"got {n!r}; use an integer >= number of parts")
        objects.append(ObjectSpec(
            name, prompt.strip(), tuple(_part(p, colors, source, f"{where}.parts[{j}]") for j, p in enumerate(parts)),
            int(n), float(sf), float(op), index=len(objects)))
    return Catalogue(objects, source)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Catalogue:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CatalogueError(f"cannot read toy catalogue {path!r}: {exc}; set toy.catalogue to a YAML file "
                             "or leave it empty for the shipped one") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogueError(f"{path}: not valid YAML: {exc}") from exc
    return parse_catalogue(data, path)


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Load and validate a catalogue YAML; None or "" = the shipped catalogue."""
    p = Path(path) if path else SHIPPED_CATALOGUE
    if not p.is_file():
        raise CatalogueError(f"toy catalogue {str(p)!r} does not exist; set toy.catalogue to a YAML file "
                             "or leave it empty for the shipped one")
    return _load_cached(str(p.resolve()), p.stat().st_mtime)


def list_objects(catalogue: Catalogue | str | Path | None = None) -> list[ObjectSpec]:
    cat = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    return list(cat.objects)


def _describe_color(c: dict[str, Any], names: dict[tuple, str]) -> str:
    def nm(rgb: list[float]) -> str:
        return names.get(tuple(rgb), "[" + ",".join(f"{x:.2f}" for x in rgb) + "]")

    if "solid" in c:
        return nm(c["solid"])
    kind, b = next(iter(c.items()))
    cols = "/".join(nm(x) for x in b["colors"])
    extra = f" x{b['count']}" if kind == "stripes" else ""
    return f"{kind}({'xyz'[b['axis']]}: {cols}{extra})"


def format_catalogue(catalogue: Catalogue | str | Path | None = None) -> str:
    """The table `sctd3d toy list` prints: name, prompt, parts, Gaussians."""
    cat = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    try:
        raw_colors = (yaml.safe_load(Path(cat.source).read_text()) or {}).get("colors") or {}
    except (OSError, yaml.YAMLError):
        raw_colors = {}
    names = {tuple(float(x) for x in v): k for k, v in raw_colors.items()}
    rows = [("#", "name", "prompt", "parts", "gaussians")]
    for o in cat.objects:
        parts = " + ".join(f"{p.primitive}[{_describe_color(p.color, names)}]" for p in o.parts)
        rows.append((str(o.index), o.name, o.prompt, parts, str(o.num_gaussians)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(cat.objects)} objects from {cat.source}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Building Gaussians
# ----------------------------------------------------------------------------------------------
def _surface_area(p: PartSpec) -> float:
    q = p.params
    if p.primitive == "cube":
        a = 6 * q["size"] ** 2
    elif p.primitive == "sphere":
        a = 4 * math.pi * q["radius"] ** 2
    elif p.primitive == "cylinder":
        a = 2 * math.pi * q["radius"] * q["height"] + 2 * math.pi * q["radius"] ** 2
    elif p.primitive == "cone":
        a = math.pi * q["radius"] * (q["radius"] + math.hypot(q["radius"], q["height"]))
    else:
        a = 4 * math.pi**2 * q["major_radius"] * q["minor_radius"]
    s = p.scale
    return a * (s[0] * s[1] * s[2]) ** (2.0 / 3.0)  # area under the (geometric-mean) scale


def _disk(n: int, r: float, g: torch.Generator) -> Tensor:
    rad = r * torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64))
    th = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    return torch.stack([rad * torch.cos(th), rad * torch.sin(th)], -1)


def _choose(n: int, weights: list[float], g: torch.Generator) -> Tensor:
    w = torch.tensor(weights, dtype=torch.float64)
    return torch.multinomial(w / w.sum(), n, replacement=True, generator=g)


def sample_surface(p: PartSpec, n: int, g: torch.Generator) -> Tensor:
    """(n, 3) float64 points uniform (by area) on the primitive's surface, in its local frame."""
    q = p.params
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if p.primitive == "cube":
        h = q["size"] / 2
        face = torch.randint(0, 6, (n,), generator=g)
        pts = (u(n, 3) * 2 - 1) * h
        axis, sign = face // 2, (face % 2) * 2 - 1
        pts[torch.arange(n), axis] = sign.double() * h
        return pts
    if p.primitive == "sphere":
        v = torch.randn(n, 3, generator=g, dtype=torch.float64)
        return q["radius"] * v / v.norm(dim=-1, keepdim=True)
    if p.primitive == "cylinder":
        r, hgt = q["radius"], q["height"]
        which = _choose(n, [2 * math.pi * r * hgt, math.pi * r * r, math.pi * r * r], g)
        th = 2 * math.pi * u(n)
        side = torch.stack([r * torch.cos(th), (u(n) - 0.5) * hgt, r * torch.sin(th)], -1)
        d = _disk(n, r, g)
        cap_y = torch.where(which == 1, hgt / 2, -hgt / 2).double()
        cap = torch.stack([d[:, 0], cap_y, d[:, 1]], -1)
        return torch.where((which == 0)[:, None], side, cap)
    if p.primitive == "cone":
        r, hgt = q["radius"], q["height"]
        lateral = math.pi * r * math.hypot(r, hgt)
        which = _choose(n, [lateral, math.pi * r * r], g)
        s = torch.sqrt(u(n))  # fraction of the way from apex to base (area grows linearly with s)
        th = 2 * math.pi * u(n)
        lat = torch.stack([s * r * torch.cos(th), hgt / 2 - s * hgt, s * r * torch.sin(th)], -1)
        d = _disk(n, r, g)
        base = torch.stack([d[:, 0], torch.full((n,), -hgt / 2, dtype=torch.float64), d[:, 1]], -1)
        return torch.where((which == 0)[:, None], lat, base)
    # torus, axis y: rejection-sample the tube angle with density (R + r cos v) / (R + r)
    R, r = q["major_radius"], q["minor_radius"]
    vs: list[Tensor] = []
    have = 0
    while have < n:
        v = 2 * math.pi * u(2 * n)
        keep = u(2 * n) < (R + r * torch.cos(v)) / (R + r)
        vs.append(v[keep])
        have += int(keep.sum())
    v = torch.cat(vs)[:n]
    th = 2 * math.pi * u(n)
    ring = R + r * torch.cos(v)
    return torch.stack([ring * torch.cos(th), r * torch.sin(v), ring * torch.sin(th)], -1)


def part_colors(p: PartSpec, local_pts: Tensor) -> Tensor:
    """(n, 3) rgb of each local-frame point under the part's colour pattern."""
    c = p.color
    if "solid" in c:
        return torch.tensor(c["solid"], dtype=torch.float64).expand(local_pts.shape[0], 3).clone()
    kind, b = next(iter(c.items()))
    cols = torch.tensor(b["colors"], dtype=torch.float64)
    x = local_pts[:, b["axis"]]
    if kind == "split":
        return cols[(x >= 0).long()]
    lo, hi = float(x.min()), float(x.max())
    band = ((x - lo) / max(hi - lo, 1e-12) * b["count"]).floor().clamp(0, b["count"] - 1).long()
    return cols[band % len(b["colors"])]


def _rotation(deg: tuple[float, float, float]) -> Tensor:
    rx, ry, rz = (math.radians(a) for a in deg)
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    Rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    Ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    Rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return Rz @ Ry @ Rx  # XYZ order: x first


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "little")


def build_object(name_or_prompt: str, catalogue: Catalogue | str | Path | None = None,
                 num_gaussians: int | None = None) -> Gaussians:
    """The object's Gaussians (float32, CPU, SH degree 0): deterministic per name and count."""
    cat = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue)
    obj = cat.get(name_or_prompt)
    n_total = obj.num_gaussians if num_gaussians is None else int(num_gaussians)
    if n_total < len(obj.parts):
        raise ValueError(f"build_object: num_gaussians={n_total} must be >= {len(obj.parts)} "
                         f"(the number of parts of {obj.name!r})")
    g = torch.Generator().manual_seed(_seed(obj.name))
    areas = [_surface_area(p) for p in obj.parts]
    counts = [max(1, int(round(n_total * a / sum(areas)))) for a in areas]
    counts[-1] = n_total - sum(counts[:-1])
    means, colors, sigmas = [], [], []
    for p, n, area in zip(obj.parts, counts, areas):
        local = sample_surface(p, n, g)
        colors.append(part_colors(p, local))
        world = (local * torch.tensor(p.scale, dtype=torch.float64)) @ _rotation(p.rotate_deg).T
        means.append(world + torch.tensor(p.translate, dtype=torch.float64))
        sigmas.append(torch.full((n,), obj.scale_factor * math.sqrt(area / n), dtype=torch.float64))
    m = torch.cat(means).float()
    sig = torch.cat(sigmas).float()
    rgb = torch.cat(colors).float()
    N = m.shape[0]
    quats = torch.zeros(N, 4)
    quats[:, 0] = 1.0
    logit = math.log(obj.opacity / (1 - obj.opacity))
    return Gaussians(
        means=m, log_scales=torch.log(sig)[:, None].expand(N, 3).clone(), quats=quats,
        opacity_logits=torch.full((N,), logit), sh=rgb_to_sh0(rgb)[:, None, :].clone(), sh_degree=0,
    )
