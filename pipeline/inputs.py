"""Prompt lists in, validated asset requests out.

Why: every row is checked before any GPU time is spent, so a batch of thousands never dies (or
burns a GPU hour) on row 4,812. Bad rows become `rejected` records with the reason; the rest run.
Assets are identified by a stable hash of (normalised prompt, seed, generation hash: the generation
settings plus the content identity of the prior's weights, stages.generation_id.generation_hash), so
prompts never become paths, re-running the same input finds the same assets, and evaluation
settings never rename an asset. The normalised prompt is what the prior can tell apart: Unicode
NFC, whitespace (tabs and line breaks too) collapsed, and lowercased when the prior's tokenizer
lowercases (stages.priors.registry.prompt_lowercased; CLIP's does), so "A Red Cube" and "a red cube"
are one asset. The manifest keeps the first row's text with its case.

Each JSONL row is bounded before it is decoded (MAX_ROW_BYTES, MAX_ROW_DEPTH) and must name each
key once: a row over a bound, or with a repeated key, is rejected with its reason; the rest run.

Formats (any fsspec URL): `.txt` (one prompt per line), `.jsonl` (`prompt`, optional `seed`,
`config` overrides as a nested mapping or dotted keys, `tags`), `.parquet` (a `prompt` column,
optional `seed`/`tags`).
"""

from __future__ import annotations

from common.errors import UserError
import dataclasses
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import fsspec


from common.config import Config, ConfigError, apply_overrides, config_hash, to_dict
from pipeline.validate import check_names

MAX_PROMPT_CHARS = 2000  # hard cap independent of any tokenizer (a 10,000-char prompt is a mistake)
MAX_ROW_BYTES = 64 * 1024  # one input row (a prompt <= 2000 chars, a few overrides and tags fit 10x)
MAX_ROW_DEPTH = 32       # nesting of a row's objects/lists (a config override needs about 5)
WHITESPACE_CONTROLS = frozenset("\t\n\v\f\r")  # collapsed like spaces, not rejected as controls
BOM = b"\xef\xbb\xbf"   # a UTF-8 byte-order mark some editors put first; never part of a prompt

# Per-row `config` overrides: generation settings only. Paths, models, devices, catalogues and
# resource sizes come from the run's own config and flags, never from a prompt file.
ROW_OVERRIDE_KEYS = ("generate.method", "generate.iterations", "prior.guidance_scale",
                     "prior.negative_prompt", "prior.view_dependent_prompt", "prior.front_angle_deg",
                     "prior.back_angle_deg", "prior.perp_neg", "prior.perp_neg_weight",
                     "prior.perp_neg_front_decay", "prior.perp_neg_side_decay")
# the loop's sections; each registered method adds its own (stages.methods.MethodSpec.row_sections)
ROW_OVERRIDE_SECTIONS = ("generate.optim", "generate.losses", "generate.augment", "generate.cameras",
                         "generate.densify")
ROW_OVERRIDE_DENIED = ("generate.densify.max_gaussians",)   # a resource size inside an allowed section
ROW_OVERRIDE_CAPS = {"generate.iterations": 20_000}          # 4x the spec's 5000: a bounded GPU cost


def row_override_sections() -> tuple[str, ...]:
    """The sections a prompt row may override: the methods' own (sorted) and the loop's."""
    from stages.methods import METHODS  # imports torch: only when a row carries overrides

    methods = sorted({sec for spec in METHODS.values() for sec in spec.row_sections})
    return tuple(methods) + tuple(s for s in ROW_OVERRIDE_SECTIONS if s not in methods)


def row_override_rule() -> str:
    return ("a row may override only " + ", ".join(
        [f"{k} (<= {ROW_OVERRIDE_CAPS[k]})" if k in ROW_OVERRIDE_CAPS else k for k in ROW_OVERRIDE_KEYS]
        + [f"{sec}.*" for sec in row_override_sections()])
        + f" (not {', '.join(ROW_OVERRIDE_DENIED)}); paths, models, devices and sizes come from the "
          f"run's config and flags")


class InputError(UserError, ValueError):
    """The prompt file as a whole cannot be read (missing, unknown format, no prompt column)."""


@dataclass
class AssetRequest:
    """One validated, deduplicated asset to generate."""

    asset_id: str
    prompt: str          # normalised
    seed: int
    config_hash: str
    overrides: dict      # per-row config overrides (nested mapping), {} if none
    tags: list = field(default_factory=list)
    line: int = 0        # 1-based row number in the input
    slug: str = ""
    generation_hash: str = ""  # what the asset id hashes besides prompt and seed


@dataclass
class RejectedRow:
    """A row that failed validation; becomes a `rejected` manifest record."""

    asset_id: str        # "r" + hash of the raw row: stable, never a path from the prompt
    prompt: str          # printable rendering of what was given (truncated)
    reason: str
    line: int
    seed: Optional[int] = None
    tags: list = field(default_factory=list)


@dataclass
class PromptBatch:
    requests: list[AssetRequest]
    rejected: list[RejectedRow]
    duplicates: int      # rows that collapsed into an earlier identical request


def normalise_prompt(prompt: str) -> str:
    """NFC, trimmed, inner whitespace collapsed: formatting differences never make a new asset."""
    return " ".join(unicodedata.normalize("NFC", prompt).split())


def identity_text(prompt: str, lowercase: bool = False) -> str:
    """The prompt as an asset id hashes it: normalised, and lowercased when the prior's tokenizer
    lowercases (an all-lowercase prompt's text, hence its id, is the same either way)."""
    text = normalise_prompt(prompt)
    return unicodedata.normalize("NFC", text.lower()) if lowercase else text


def slugify(prompt: str, max_len: int = 40) -> str:
    """Readable ASCII label for humans (never used alone as a path)."""
    s = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s[:max_len].rstrip("-") or "prompt"


def asset_id_for(prompt: str, seed: int, cfg_hash: str, lowercase: bool = False) -> str:
    """Stable id of (normalised prompt, seed, generation hash): 20 hex chars. `lowercase`: the
    prior's tokenizer lowercases (see identity_text)."""
    blob = json.dumps([identity_text(prompt, lowercase), int(seed), cfg_hash], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _rejected_id(raw: bytes | str, line: int) -> str:
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    return "r" + hashlib.sha256(data).hexdigest()[:19]


def _printable(raw: bytes | str, limit: int = 200) -> str:
    if len(raw) > 8 * limit:  # a huge row: show its start and its size, never decode all of it
        unit = "bytes" if isinstance(raw, bytes) else "chars"
        return _printable(raw[:limit], limit) + f"... ({len(raw)} {unit})"
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = "".join(c if unicodedata.category(c) != "Cc" else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _check_prompt(prompt: str, count_tokens: Optional[Callable[[str], int]],
                  max_tokens: Optional[int]) -> Optional[str]:
    """None if the prompt is usable, else the reason it is rejected."""
    if not prompt.strip():
        return "empty or whitespace-only prompt"
    bad = [c for c in prompt if unicodedata.category(c) == "Cc" and c not in WHITESPACE_CONTROLS]
    if bad:
        return (f"prompt contains control characters {sorted({f'U+{ord(c):04X}' for c in bad})}; "
                f"remove them")
    if any(unicodedata.category(c) == "Cs" for c in prompt):
        return "prompt contains lone surrogates (invalid Unicode)"
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"prompt is {len(prompt)} characters (limit {MAX_PROMPT_CHARS}); shorten it"
    if count_tokens is not None and max_tokens is not None:
        n = int(count_tokens(normalise_prompt(prompt)))
        if n > max_tokens:
            return f"prompt is {n} tokens, over the prior's limit of {max_tokens}; shorten it"
    return None


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json object_pairs_hook: a key given twice is an error, not "the last one wins"."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"')
_JSON_BRACKETS = re.compile(rb"[\[\]{}]")


def _json_depth(raw: bytes) -> int:
    """Deepest nesting of objects/arrays in one JSON text, counted without decoding it (brackets
    inside strings do not count); a cheap bound before json.loads, which recurses per level."""
    depth = deepest = 0
    for b in _JSON_BRACKETS.findall(_JSON_STRING.sub(b'""', raw)):
        depth += 1 if b in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def _depth(obj: Any) -> int:
    """Nesting depth of decoded dicts/lists (iterative: any depth is safe to measure)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, (list, tuple)):
            deepest = max(deepest, d)
            if d > MAX_ROW_DEPTH:
                break
            stack.extend((x, d + 1) for x in o)
    return deepest


def _unreachable(e: BaseException) -> Optional[str]:
    """For a 'not found' from a remote filesystem: the connection failure behind it, if any
    (fsspec's HTTP client reports a refused connection as FileNotFoundError)."""
    seen, c, found = set(), e.__cause__ or e.__context__, None
    while c is not None and id(c) not in seen:  # the innermost OSError names the cause best
        seen.add(id(c))
        if isinstance(c, OSError) and not isinstance(c, FileNotFoundError):
            found = c
        c = c.__cause__ or c.__context__
    if found is None:
        return None
    msg = str(found).strip().splitlines()
    return f"{type(found).__name__}: {msg[0] if msg else ''}"[:300]


def not_found_error(uri: str, e: BaseException) -> InputError:
    """'prompt file not found', or, when the server could not be reached at all, that."""
    why = _unreachable(e)
    if why:
        return InputError(f"cannot connect to read the prompt file {uri!r} ({why}); check the URL "
                          f"and that its server is up and reachable from here")
    return InputError(f"prompt file not found: {uri!r}")


def _flatten(overrides: dict, prefix: str = "") -> Iterator[tuple[Any, Any]]:
    """(dotted key, value) leaves of a nested and/or dotted override mapping."""
    for k, v in overrides.items():
        key = f"{prefix}{k}" if isinstance(k, str) else k
        if isinstance(key, str) and isinstance(v, dict) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _is_config_key(tree: dict, key: str) -> bool:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_row_overrides(cfg: Config, overrides: dict) -> Optional[str]:
    """None if a row's overrides are all allowed generation settings within bounds, else the
    reason. Unknown keys pass here: the config's own validation names them (with a did-you-mean)."""
    tree = to_dict(cfg)
    for key, value in _flatten(overrides):
        if not isinstance(key, str) or not _is_config_key(tree, key):
            continue
        if key == "generate.seed":
            return ("config override 'generate.seed' is not allowed in a prompt row: set the row's "
                    "'seed' field instead (one source of truth for the seed)")
        allowed = key in ROW_OVERRIDE_KEYS or any(key.startswith(sec + ".")
                                                   for sec in row_override_sections())
        if not allowed or key in ROW_OVERRIDE_DENIED:
            return f"config override {key!r} is not allowed in a prompt row: {row_override_rule()}"
        cap = ROW_OVERRIDE_CAPS.get(key)
        if cap is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not value <= cap:
            return (f"config override {key}={value!r} is over the per-row cap of {cap}; raise it in "
                    f"the run's config instead ({row_override_rule()})")
    return None


def _catalogue_check(cfg: Config) -> Optional[Callable[[str], Optional[str]]]:
    """With toy metrics configured, a prompt must name a catalogue object: checked here, before any
    work, instead of failing every re-run after generation (with the catalogue's did-you-mean)."""
    toy_metrics = {"toy_psnr", "toy_rprec"} & set(cfg.metrics.metrics)
    if not (toy_metrics and cfg.pipeline.score):
        return None
    from stages.toyworld.catalogue import CatalogueError, load_catalogue

    try:
        cat = load_catalogue(cfg.toy.catalogue or None)
    except CatalogueError as e:
        raise InputError(str(e)) from None

    def check(prompt: str) -> Optional[str]:
        try:
            cat.get(normalise_prompt(prompt))
        except CatalogueError as e:
            return f"{e}; metrics.metrics has {sorted(toy_metrics)}, which need a catalogue object"
        return None
    return check


def _as_seed(seed: Any) -> Any:
    """Integral floats (pandas stores a seed column with gaps as float64: 1.0) become ints."""
    if isinstance(seed, float) and seed.is_integer():
        return int(seed)
    return seed


def _rows_from_text(data: bytes) -> list[tuple[int, Any, Optional[str]]]:
    """(line, raw, decode error) per non-empty-file line; blank lines are kept (and rejected)."""
    out = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, raw in enumerate(lines, 1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        out.append((i, raw, None))
    return out


def _read_parquet(data: bytes) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    if "prompt" not in table.column_names:
        raise InputError(f"Parquet input has no 'prompt' column (columns: {table.column_names})")
    cols = [c for c in ("prompt", "seed", "tags", "config") if c in table.column_names]
    rows = table.select(cols).to_pylist()
    return [(i, r) for i, r in enumerate(rows, 1)]


def _detect_format(uri: str) -> str:
    u = uri.lower().split("?")[0]
    if u.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if u.endswith((".parquet", ".pq")):
        return "parquet"
    if u.endswith((".txt", ".prompts", ".text")):
        return "txt"
    raise InputError(f"cannot tell the format of {uri!r} from its name; use .txt (one prompt per "
                     f"line), .jsonl or .parquet")


def read_prompts(uri: str, cfg: Config, *, count_tokens: Optional[Callable[[str], int]] = None,
                 max_tokens: Optional[int] = None, storage_options: Optional[dict] = None
                 ) -> PromptBatch:
    """Read, validate and deduplicate a prompt list. `count_tokens`/`max_tokens`: the prior's limit.
    Case-only variants are one asset when the prior's tokenizer lowercases (read from local files)."""
    from stages.priors.registry import prompt_lowercased

    fmt = _detect_format(uri)
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError as e:
        raise not_found_error(uri, e) from None
    lowercase = prompt_lowercased(cfg.prior)
    if fmt != "parquet" and data.startswith(BOM):
        data = data[len(BOM):]
    in_catalogue = _catalogue_check(cfg)
    base_hash = config_hash(cfg)
    base_gen = asset_generation_hash(cfg)
    requests: list[AssetRequest] = []
    rejected: list[RejectedRow] = []
    seen: dict[str, AssetRequest] = {}
    seen_rejected: set[str] = set()
    duplicates = 0

    def reject(raw: Any, line: int, reason: str, seed=None, tags=None) -> None:
        raw_b = raw if isinstance(raw, bytes) else json.dumps(raw, default=str,
                                                              sort_keys=True).encode()
        rid = _rejected_id(raw_b + b"\x00" + reason.encode(), line)
        if rid in seen_rejected:
            return
        seen_rejected.add(rid)
        shown = raw.get("prompt", raw) if isinstance(raw, dict) else raw
        rejected.append(RejectedRow(asset_id=rid, prompt=_printable(shown if isinstance(shown, (str, bytes))
                                                                    else repr(shown)),
                                    reason=reason, line=line, seed=seed, tags=list(tags or [])))

    def accept(prompt: str, seed: int, overrides: dict, tags: list, line: int) -> None:
        nonlocal duplicates
        if overrides:
            not_allowed = check_row_overrides(cfg, overrides)
            if not_allowed:
                reject({"prompt": prompt, "config": overrides}, line, not_allowed, seed, tags)
                return
            try:
                row_cfg = check_names(apply_overrides(cfg, overrides), "row config")
                h, g = config_hash(row_cfg), asset_generation_hash(row_cfg)
            except ConfigError as e:
                reject({"prompt": prompt, "config": overrides}, line, f"bad config override: {e}",
                       seed, tags)
                return
        else:
            h, g = base_hash, base_gen
        aid = asset_id_for(prompt, seed, g, lowercase)
        if aid in seen:
            duplicates += 1
            return
        req = AssetRequest(asset_id=aid, prompt=normalise_prompt(prompt), seed=seed, config_hash=h,
                           overrides=overrides, tags=tags, line=line, slug=slugify(prompt),
                           generation_hash=g)
        seen[aid] = req
        requests.append(req)

    default_seed = int(cfg.generate.seed)
    if fmt == "parquet":
        items: list[tuple[int, Any]] = [(i, r) for i, r in _read_parquet(data)]
    else:
        items = [(i, raw) for i, raw, _ in _rows_from_text(data)]

    for line, raw in items:
        # --- decode -----------------------------------------------------------------------
        if isinstance(raw, bytes):
            if len(raw) > MAX_ROW_BYTES:
                reject(raw, line, f"row is {len(raw)} bytes, over the limit of {MAX_ROW_BYTES} per "
                                  f"row; shorten it (a prompt may have {MAX_PROMPT_CHARS} characters)")
                continue
            try:
                text = raw.decode("utf-8", "strict")
            except UnicodeDecodeError as e:
                reject(raw, line, f"invalid UTF-8 at byte {e.start}: {raw[e.start:e.start + 4]!r}")
                continue
            if fmt == "txt":
                if text.lstrip().startswith("#"):
                    continue  # a comment line (documented: a prompt cannot start with '#')
                row: dict = {"prompt": text}
            else:
                if not text.strip():
                    continue  # blank JSONL lines separate nothing; skip silently
                depth = _json_depth(raw)
                if depth > MAX_ROW_DEPTH:
                    reject(raw, line, f"JSON row is nested {depth} levels deep, over the limit of "
                                      f"{MAX_ROW_DEPTH}; a row is a flat object with 'prompt', 'seed', "
                                      f"'config' (overrides) and 'tags'")
                    continue
                try:
                    row = json.loads(text, object_pairs_hook=_no_duplicate_keys)
                except json.JSONDecodeError as e:
                    reject(raw, line, f"malformed JSON: {e.msg} at column {e.colno}")
                    continue
                except _DuplicateKey as e:
                    reject(raw, line, f"JSON row gives the key {e.args[0]!r} more than once; give "
                                      f"each key once")
                    continue
                except RecursionError:  # a bound the depth scan missed: still only this row
                    reject(raw, line, f"JSON row is nested too deeply (limit {MAX_ROW_DEPTH})")
                    continue
                if not isinstance(row, dict):
                    reject(raw, line, f"JSONL row is a {type(row).__name__}, expected an object "
                                      f"with a 'prompt' key")
                    continue
        else:
            row = dict(raw)
            depth = _depth(row)
            if depth > MAX_ROW_DEPTH:
                reject(repr(row)[:1000], line, f"row is nested {depth}+ levels deep, over the limit "
                                               f"of {MAX_ROW_DEPTH}")
                continue
            size = len(json.dumps(row, default=str))
            if size > MAX_ROW_BYTES:
                reject(repr(row)[:1000], line, f"row is {size} bytes as JSON, over the limit of "
                                               f"{MAX_ROW_BYTES} per row; shorten it")
                continue
        # --- fields -----------------------------------------------------------------------
        unknown = set(row) - {"prompt", "seed", "config", "tags"}
        if unknown:
            reject(row, line, f"unknown keys {sorted(unknown)}; allowed: prompt, seed, config, tags")
            continue
        prompt = row.get("prompt")
        if isinstance(prompt, bytes):
            try:
                prompt = prompt.decode("utf-8", "strict")
            except UnicodeDecodeError as e:
                reject(row["prompt"], line, f"invalid UTF-8 at byte {e.start}")
                continue
        if not isinstance(prompt, str):
            reject(row, line, f"'prompt' must be a string, got {type(prompt).__name__}")
            continue
        seed = _as_seed(row.get("seed"))
        if seed is None:
            seed = default_seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            reject(row, line, f"'seed' must be a non-negative integer, got {seed!r}")
            continue
        tags = row.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            reject(row, line, f"'tags' must be a list of strings, got {tags!r}", seed)
            continue
        overrides = row.get("config") or {}
        if not isinstance(overrides, dict):
            reject(row, line, f"'config' must be a mapping of overrides, got {overrides!r}", seed, tags)
            continue
        reason = _check_prompt(prompt, count_tokens, max_tokens)
        if reason is None and in_catalogue is not None:
            reason = in_catalogue(prompt)
        if reason:
            reject(prompt, line, reason, seed, tags)
            continue
        accept(prompt, seed, overrides, tags, line)
    return PromptBatch(requests=requests, rejected=rejected, duplicates=duplicates)


def asset_generation_hash(cfg: Config) -> str:
    """generation_hash with the prior's weights identity (file digests cached per process)."""
    from stages.generation_id import generation_hash  # imports torch (stages.priors): lazily

    return generation_hash(cfg)


def request_config(cfg: Config, req: AssetRequest) -> Config:
    """The config one asset runs with (the run's config plus the row's overrides)."""
    return apply_overrides(cfg, req.overrides) if req.overrides else cfg


def request_to_dict(req: AssetRequest) -> dict:
    return dataclasses.asdict(req)
