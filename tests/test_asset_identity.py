"""Asset identity: an asset id hashes exactly what determines the generated asset.

Every config key is a generation key (changes ids), an evaluation key (changes eval_hash only) or
neither; the prior's weights enter by content; `sctd3d evaluate` re-scores a finished run under
new evaluation settings without touching its assets, and refuses a config that would generate
different ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import manifest
from common.config import (CONFIG_DIR, EVALUATION_SECTIONS, GENERATION_SECTIONS, NOT_HASHED,
                             TOY_EVALUATION_KEYS, Config, ConfigError, GenerateConfig, SCTDConfig,
                             apply_overrides, eval_hash, load_config, to_dict)
from pipeline.inputs import asset_id_for, read_prompts
from pipeline.validate import REGISTERED
from stages.generation_id import generation_keys
from stages.priors import identity
from stages.priors.registry import prior_identity, prior_spec

PROMPT = "a red cube"


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _leaves(cls: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f))
    return out


LEAVES = dict(_leaves())


def _get(cfg: Config, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _candidates(key: str, value, meta: dict) -> list:
    """Valid-looking different values for one key, most natural first."""
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if key in REGISTERED:                 # method / prior / init names: their registries' keys
        return [n for n in REGISTERED[key][1]() if n != value]
    if choices:
        return [c for c in choices if c != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        c = [value + 1, value - 1, lo, hi]
        return [int(x) for x in c if x is not None and x != value and (lo is None or x >= lo)
                and (hi is None or x <= hi)]
    if isinstance(value, float):
        c = [value * 1.5 if value else 0.5, value + 0.1, value * 0.5, value - 0.1, lo, hi]
        return [float(x) for x in c if x is not None and x != value and (lo is None or x >= lo)
                and (hi is None or x <= hi)]
    if isinstance(value, str):
        return {"prior.model": ["someorg/other-model", "toy_pixel"], "prior.revision": ["0123abc"],
                "prior.device": ["cpu"], "metrics.device": ["cpu"],
                "metrics.metrics": []}.get(key, [value + "-changed" if value else "changed"])
    if isinstance(value, list):
        if key == "metrics.metrics":
            return [["clip_l"], ["toy_psnr"]]
        if value and all(isinstance(x, (int, float)) for x in value):
            return [value[:-1] + [value[-1] * 1.02 + 0.01], [value[0] * 0.98] + value[1:], value[:-1]]
        return [value + ["x"], ["x"]]
    if isinstance(value, dict):
        return [{**value, "clip_l": 9.0}]
    raise AssertionError(f"no candidate for {key}={value!r}")


def _changed(cfg: Config, key: str, prompts: str | None = None) -> Config:
    """`cfg` with `key` set to a different value that validation accepts (and, given `prompts`,
    that gives an asset id: toy_sd's prior.model must name a toy SD)."""
    errors = []
    for v in _candidates(key, _get(cfg, key), dict(LEAVES[key].metadata)):
        try:
            new = apply_overrides(cfg, {key: v})
            if prompts is not None:
                _id(prompts, new)
        except ConfigError as e:
            errors.append(str(e))
            continue
        assert _get(new, key) != _get(cfg, key)
        return new
    raise AssertionError(f"no valid changed value for {key}: {errors}")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("prompts") / "p.txt"
    p.write_text(PROMPT + "\n")
    return str(p)


def _id(prompts: str, cfg: Config) -> str:
    [req] = read_prompts(prompts, cfg).requests
    return req.asset_id


def _classified(key: str) -> str:
    section = key.split(".")[0]
    if key in NOT_HASHED or section in NOT_HASHED:
        return "neither"
    if section in GENERATION_SECTIONS:
        return "generation"
    if section in EVALUATION_SECTIONS:
        return "evaluation"
    if section == "toy" and key.split(".", 1)[1] in TOY_EVALUATION_KEYS:
        return "evaluation"
    return "unclassified"


GEN_KEYS = sorted(k for k in LEAVES if _classified(k) == "generation")
EVAL_KEYS = sorted(k for k in LEAVES if _classified(k) == "evaluation")
NEITHER_KEYS = sorted(k for k in LEAVES if _classified(k) == "neither" and k != "generate.seed")
TOY_GEN_KEYS = sorted(k for k in prior_spec("toy_exact").config_keys if k.startswith("toy."))


def _registered(key: str) -> list[str]:
    return REGISTERED[key][1]()


def _with(key: str, name) -> Config:
    """The defaults with one registered name chosen (method, prior or init)."""
    return apply_overrides(Config(), {key: name})


# every registered method, prior and init, each on the defaults of the others
COMPONENTS = [(k, n) for k in ("generate.method", "prior.name", "init.method") for n in _registered(k)]


# ----------------------------------------------------------------------------------------------
# the classification and the hashes
# ----------------------------------------------------------------------------------------------
def test_every_config_key_is_classified():
    unclassified = [k for k in LEAVES if _classified(k) == "unclassified"]
    assert not unclassified, f"decide whether these change the asset, its scores, or neither: {unclassified}"
    assert len(GEN_KEYS) > 80 and len(EVAL_KEYS) > 20  # the sections are really walked
    assert "prior.dtype" in GEN_KEYS and "prior.device" not in GEN_KEYS


def test_every_generation_key_is_read_by_something_or_not_hashed():
    """A generation-section key that no registered method, prior or init declares would never be
    hashed: it must be declared where it is read, or listed in NOT_HASHED with the reason."""
    read = set()
    for key, name in COMPONENTS:
        read |= generation_keys(_with(key, name))
    read |= generation_keys(_with("prior.perp_neg", True))
    orphans = [k for k in GEN_KEYS if k not in read]
    assert not orphans, f"declare where these are read (MethodSpec.config_keys, PriorSpec.config_keys, INIT_KEYS) or NOT_HASHED: {orphans}"


@pytest.mark.parametrize("key,name", COMPONENTS)
def test_keys_a_component_reads_change_the_id_and_others_do_not(prompts, key, name):
    """Under each method / prior / init: every key it reads changes the id; every other generation
    key leaves it (e.g. SDS ids ignore generate.sctd.*; a ball init ignores Point-E's keys)."""
    base = _with(key, name)
    read = generation_keys(base)
    assert key in read
    first = _id(prompts, base)
    own = [k for k in GEN_KEYS + TOY_GEN_KEYS if k != key and k.split(".")[0] in (key.split(".")[0], "toy")]
    moved, stayed = [], []
    for k in own:
        (moved if _id(prompts, _changed(base, k, prompts)) != first else stayed).append(k)
    assert sorted(moved) == sorted(k for k in read if k in own)
    assert sorted(stayed) == sorted(k for k in own if k not in read)


def test_sds_ids_do_not_move_with_sctd_keys(prompts):
    sds = _with("generate.method", "sds")
    first = _id(prompts, sds)
    every_sctd = {f"generate.sctd.{k}": v for k, v in {"n_segments": 7, "segments": "mono", "t_tau": 120,
                                                       "warmup_iters": 3, "t_low": 30, "min_gap": 60,
                                                       "weight_lambda": 0.3, "consistency_approx": False,
                                                       "cross_term": "conditional",
                                                       "eps_star_offset": 0.5}.items()}
    assert _id(prompts, apply_overrides(sds, every_sctd)) == first
    assert _id(prompts, apply_overrides(sds, {"generate.baselines.sds_max_step": 900})) != first
    sctd = _with("generate.method", "sctd")
    assert _id(prompts, apply_overrides(sctd, every_sctd)) != _id(prompts, sctd)


@dataclasses.dataclass
class _SCTDWithTestField(SCTDConfig):
    test_only_knob: float = 0.25  # a field added to the method's config section (default = old behaviour)


@dataclasses.dataclass
class _GenerateWithTestSection(GenerateConfig):
    sctd: _SCTDWithTestField = dataclasses.field(default_factory=_SCTDWithTestField)


def _with_test_field(cfg: Config, value: float) -> Config:
    sctd = _SCTDWithTestField(**dataclasses.asdict(cfg.generate.sctd), test_only_knob=value)
    gen = {f.name: getattr(cfg.generate, f.name) for f in dataclasses.fields(GenerateConfig)}
    return dataclasses.replace(cfg, generate=_GenerateWithTestSection(**{**gen, "sctd": sctd}))


@pytest.mark.parametrize("method", ["sctd", "sds"])
def test_a_new_field_at_its_default_changes_no_id(prompts, method):
    """An upgrade that adds a key to a method's section (SCTD reads all of generate.sctd.*) keeps
    every existing id while the key is at its default; away from it, it moves the ids of the
    methods that read it only."""
    cfg = load_config("toy.yaml", [f"generate.method={method}"])
    before = _id(prompts, cfg)
    grown = _with_test_field(cfg, 0.25)
    assert ("generate.sctd.test_only_knob" in generation_keys(grown)) == (method == "sctd")
    assert _id(prompts, grown) == before
    moved = _id(prompts, _with_test_field(cfg, 0.5))
    assert (moved != before) if method == "sctd" else (moved == before)


FROZEN_IDS = Path(__file__).with_name("frozen_asset_ids.json")
FROZEN_ROWS = (("a red cube", 0), ("a wooden chair", 7))


def _shipped_ids() -> dict[str, str]:
    from pipeline.inputs import asset_generation_hash

    out = {}
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        name = path.relative_to(CONFIG_DIR).as_posix()
        g = asset_generation_hash(load_config(name))
        for prompt, seed in FROZEN_ROWS:
            out[f"{name}|{prompt}|{seed}"] = asset_id_for(prompt, seed, g)
    return out


def test_shipped_config_ids_are_frozen(tmp_path, monkeypatch):
    """The asset ids of every shipped config (two fixed prompts and seeds) are pinned: a change that
    moves them re-keys (regenerates) every existing run of that config, so it must be a decision:
    update tests/frozen_asset_ids.json and say so in the README ("Asset ids")."""
    import huggingface_hub.constants as hc
    import huggingface_hub.file_download as fd

    # hub priors without a cached snapshot: ids name the hub id only (the same on every machine)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(fd, "HF_HUB_CACHE", str(tmp_path), raising=False)
    frozen = json.loads(FROZEN_IDS.read_text())
    now = _shipped_ids()
    assert set(now) == set(frozen), "a shipped config was added or removed: add its frozen ids"
    moved = sorted(k for k in now if now[k] != frozen[k])
    assert not moved, f"asset ids moved for {moved}"


@pytest.mark.parametrize("key", EVAL_KEYS)
def test_each_evaluation_key_keeps_the_id_and_changes_eval_hash(prompts, key):
    base = Config()
    new = _changed(base, key)
    assert _id(prompts, new) == _id(prompts, base)
    assert eval_hash(new) != eval_hash(base)


@pytest.mark.parametrize("key", NEITHER_KEYS)
def test_each_other_key_keeps_the_id_and_eval_hash(prompts, key):
    base = Config()
    new = _changed(base, key)
    assert _id(prompts, new) == _id(prompts, base)
    assert eval_hash(new) == eval_hash(base)


@pytest.mark.parametrize("key", TOY_GEN_KEYS)
def test_toy_keys_are_generation_keys_only_where_the_toy_world_generates(prompts, key):
    sd = Config()
    assert _id(prompts, _changed(sd, key)) == _id(prompts, sd)  # Stable Diffusion never reads them
    exact = _with("prior.name", "toy_exact")
    assert _id(prompts, _changed(exact, key)) != _id(prompts, exact)


def test_default_seed_enters_as_the_rows_seed(tmp_path):
    rows = tmp_path / "p.jsonl"
    rows.write_text(json.dumps({"prompt": PROMPT}) + "\n" + json.dumps({"prompt": PROMPT, "seed": 7}) + "\n")
    a = read_prompts(str(rows), Config()).requests
    b = read_prompts(str(rows), apply_overrides(Config(), {"generate.seed": 3})).requests
    assert a[0].asset_id != b[0].asset_id  # the row without a seed now runs with seed 3
    assert a[1].asset_id == b[1].asset_id  # the row with its own seed is the same asset


def test_same_prompt_seed_settings_same_id_across_processes(tmp_path, prompts):
    cfg = load_config("toy.yaml")
    other = tmp_path / "q.txt"
    other.write_text("  a  red   cube \r\n")  # formatting never makes a new asset
    here = _id(prompts, cfg)
    assert here == _id(prompts, load_config("toy.yaml")) == _id(str(other), cfg)
    assert here == _id(prompts, load_config("toy.yaml", ["prior.device=auto", "pipeline.max_attempts=9"]))
    code = ("from common.config import Config; from pipeline.inputs import read_prompts; "
            f"print(read_prompts({prompts!r}, Config()).requests[0].asset_id)")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(Path(__file__).resolve().parent.parent), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _id(prompts, Config())


# ----------------------------------------------------------------------------------------------
# prior weights by content
# ----------------------------------------------------------------------------------------------
def _toy_sd_copy(tmp_path) -> Path:
    from stages.priors.stable_diffusion import TOY_SD_DIR

    dst = tmp_path / "toy_sd"
    shutil.copytree(TOY_SD_DIR, dst)
    return dst


def _flip_byte(path: Path, offset: int, mtime_ns: int | None = None) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))
    # a later write has a later mtime; set it explicitly so coarse filesystem clocks cannot hide it
    ns = mtime_ns if mtime_ns is not None else st.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(ns, ns))


def test_prior_weights_content_changes_the_id(tmp_path, prompts):
    d = _toy_sd_copy(tmp_path)
    cfg = load_config("toy.yaml", [f"prior.model={d}"])
    first = _id(prompts, cfg)
    weights = d / "unet" / "diffusion_pytorch_model.safetensors"
    _flip_byte(weights, weights.stat().st_size // 2)
    perturbed = _id(prompts, cfg)
    assert perturbed != first
    _flip_byte(weights, weights.stat().st_size // 2)  # restored bytes: the original asset again
    assert _id(prompts, cfg) == first


def test_single_safetensors_file_is_identified_by_content(tmp_path, prompts):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(64))
    cfg = apply_overrides(Config(), {"prior.model": str(f)})
    a = _id(prompts, cfg)
    _flip_byte(f, 40)
    assert _id(prompts, cfg) != a


def test_weight_digests_are_cached_by_path_size_mtime(tmp_path):
    d = _toy_sd_copy(tmp_path)
    first = identity.tree_digest(d)
    weights = d / "vae" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    # same size, same mtime: the cached digest is used, the file is not read again
    _flip_byte(weights, 100, mtime_ns=before)
    assert identity.tree_digest(d) == first
    os.utime(weights, ns=(before + 10**9, before + 10**9))
    assert identity.tree_digest(d) != first


def test_hub_id_identity_uses_the_cached_commit(tmp_path, monkeypatch):
    commit = "a" * 40
    snap = tmp_path / "models--org--m" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text("{}")
    (tmp_path / "models--org--m" / "refs").mkdir()
    (tmp_path / "models--org--m" / "refs" / "main").write_text(commit)
    import huggingface_hub.constants as hc
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(fd, "HF_HUB_CACHE", str(tmp_path), raising=False)
    cfg = apply_overrides(Config(), {"prior.model": "org/m"})
    assert prior_identity(cfg) == {"kind": "hub", "id": "org/m", "revision": None, "commit": commit}
    missing = apply_overrides(Config(), {"prior.model": "org/not-cached"})
    assert prior_identity(missing)["commit"] is None
    gone = apply_overrides(Config(), {"prior.model": str(tmp_path / "no-such-dir")})
    assert prior_identity(gone) == {"kind": "missing", "path": str(tmp_path / "no-such-dir")}


# ----------------------------------------------------------------------------------------------
# load_prior: the run's toy section reaches the exact prior
# ----------------------------------------------------------------------------------------------
def test_load_prior_builds_toy_exact_from_the_runs_toy_section(tmp_path):
    from stages.priors.registry import load_prior

    cfg = load_config("toy.yaml", ["prior.name=toy_exact", "prior.image_size=8", "toy.views_per_object=2",
                                   f"toy.cache_dir={tmp_path}"])
    prior = load_prior(cfg.prior, "cpu", toy=cfg.toy)
    assert all(x.shape[0] == 2 for x in prior._x)  # 2 views per object, not the default 256


def test_generate_and_workers_pass_the_toy_section(tmp_path, monkeypatch):
    """The two run paths that load a prior (stages.generate and a worker's cached prior) hand it
    cfg.toy; before, toy_exact silently used ToyConfig() defaults."""
    from pipeline import workers
    from stages.generate import generate
    from stages.priors import toy_exact

    seen = []

    class Stop(Exception):
        pass

    def recording_load(prior_cfg, device, toy=None):
        seen.append(toy)
        raise Stop

    monkeypatch.setattr(toy_exact, "load", recording_load)
    cfg = load_config("toy.yaml", ["prior.name=toy_exact", "toy.views_per_object=3"])
    with pytest.raises(Stop):
        generate(cfg, PROMPT, 0, str(tmp_path / "a"), progress=False)
    monkeypatch.setattr(workers, "_PRIORS", {})
    with pytest.raises(Stop):
        workers.generate(cfg, PROMPT, 0, str(tmp_path / "b"))
    assert len(seen) == 2 and all(t is not None and t.views_per_object == 3 for t in seen)


# ----------------------------------------------------------------------------------------------
# manifest schema v2
# ----------------------------------------------------------------------------------------------
def test_v1_records_read_with_null_identity_columns(tmp_path):
    from common.storage import open_storage

    st = open_storage(str(tmp_path))
    v1_cols = [f for f in manifest.SCHEMA if f.name not in ("generation_hash", "eval_hash", "evaluated_at")]
    v1 = pa.Table.from_pylist([{**{f.name: None for f in v1_cols}, "asset_id": "ab12", "status": "done",
                                "config_hash": "cafe", "schema_version": 1}], schema=pa.schema(v1_cols))
    os.makedirs(tmp_path / manifest.PARTS_DIR)
    pq.write_table(v1, tmp_path / manifest.PARTS_DIR / "ab12.parquet")
    [r] = manifest.read(st).to_pylist()
    assert r["schema_version"] == 1 and r["config_hash"] == "cafe"
    assert r["generation_hash"] is None and r["eval_hash"] is None and r["evaluated_at"] is None
    assert manifest.SCHEMA_VERSION == 2


def test_evaluate_check_reads_v1_run_json_config():
    from stages.evaluate import EvaluateError, check_same_generation

    cfg = load_config("toy.yaml")
    v1 = {"config": to_dict(cfg)}  # a run from before generation_hash was recorded
    check_same_generation(load_config("toy.yaml", ["render.num_views=7"]), v1, [])
    with pytest.raises(EvaluateError, match=r"would generate different assets \(generate.iterations: 600 -> 601\); "
                                            r"use sctd3d run"):
        check_same_generation(load_config("toy.yaml", ["generate.iterations=601"]), v1, [])
    with pytest.raises(EvaluateError, match="cannot tell which settings"):
        check_same_generation(cfg, {}, [{"generation_hash": None}])


# ----------------------------------------------------------------------------------------------
# `sctd3d evaluate` on a finished run
# ----------------------------------------------------------------------------------------------
TINY = ["generate.iterations=3", "generate.save_ply_at=[]", "generate.checkpoint_every=0",
        "init.ball_num_gaussians=150", "render.num_views=3", "render.video=false",
        "metrics.metrics=[toy_psnr]", "metrics.fid=false", "pipeline.report=false"]


def test_evaluate_rescores_a_run_without_touching_its_assets(tmp_path, prompts, capsys):
    from pipeline.cli import main
    from pipeline.run import run_batch

    out = str(tmp_path / "run")
    cfg = load_config("toy.yaml", TINY)
    s = run_batch(prompts, cfg, out, progress=False)
    assert s.done == 1
    [rec] = manifest.read(out).to_pylist()
    run_info = json.loads(Path(out, "run.json").read_text())
    assert rec["eval_hash"] == eval_hash(cfg) == run_info["eval_hash"]
    assert rec["generation_hash"] == run_info["generation_hash"] and rec["evaluated_at"] is None
    adir = Path(out, "assets", rec["asset_id"][:2], rec["asset_id"])
    ply = adir / "asset.ply"
    ply_bytes, ply_mtime = ply.read_bytes(), ply.stat().st_mtime_ns
    assert len(list((adir / "frames").glob("*.png"))) == 3

    # a new evaluation orbit: re-rendered and re-scored, the asset untouched
    new = load_config("toy.yaml", TINY + ["render.num_views=5", "render.elevation_deg=30"])
    from pipeline.evaluate import evaluate

    summary = evaluate(out, new)
    assert summary["rescored"] == 1 and summary["eval_hash"] == eval_hash(new) != eval_hash(cfg)
    assert ply.read_bytes() == ply_bytes and ply.stat().st_mtime_ns == ply_mtime
    assert sorted(p.name for p in (adir / "frames").glob("*.png")) == [f"{i:03d}.png" for i in range(5)]
    [after] = manifest.read(out).to_pylist()
    assert after["asset_id"] == rec["asset_id"] and after["eval_hash"] == eval_hash(new)
    assert after["evaluated_at"] is not None and after["generation_hash"] == rec["generation_hash"]
    assert after["toy_psnr"] is not None and after["toy_psnr"] != rec["toy_psnr"]
    assert after["finished_at"] == rec["finished_at"] and after["attempts"] == rec["attempts"]

    # same settings again: nothing to do; a run with the new settings finds the asset done
    assert evaluate(out, new)["rescored"] == 0
    again = run_batch(prompts, new, out, progress=False)
    assert again.skipped == 1 and again.done == 0
    assert ply.read_bytes() == ply_bytes and ply.stat().st_mtime_ns == ply_mtime

    # a generation key changed: refused in one line, nothing written
    parts = {p.name: p.read_bytes() for p in Path(out, manifest.PARTS_DIR).iterdir()}
    with pytest.raises(SystemExit) as e:
        main(["evaluate", out, "--config", "toy.yaml", *sum((["--set", o] for o in TINY), []),
              "--set", "generate.iterations=4"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert err == ("sctd3d evaluate: error: this config would generate different assets "
                   "(generate.iterations: 3 -> 4); use sctd3d run")
    assert {p.name: p.read_bytes() for p in Path(out, manifest.PARTS_DIR).iterdir()} == parts


def test_generate_reuses_an_asset_when_only_evaluation_settings_change(tmp_path, prompts):
    """A generated but uncommitted asset (driver died before the commit) is reused by the next
    attempt under new evaluation settings; meta.json records the id's generation_hash."""
    from stages.generate import generate

    cfg = load_config("toy.yaml", TINY)
    adir = tmp_path / "a"
    res = generate(cfg, PROMPT, 0, str(adir), progress=False)
    assert res.ok
    [req] = read_prompts(prompts, cfg).requests
    meta = json.loads((adir / "meta.json").read_text())
    assert meta["generation_hash"] == req.generation_hash
    ply = adir / "asset.ply"
    before = (ply.read_bytes(), ply.stat().st_mtime_ns)
    new = load_config("toy.yaml", TINY + ["render.num_views=9", "metrics.metrics=[toy_rprec]"])
    again = generate(new, PROMPT, 0, str(adir), progress=False)
    assert again.ok and (ply.read_bytes(), ply.stat().st_mtime_ns) == before


def test_run_without_scoring_then_evaluate_fills_the_scores(tmp_path, prompts, monkeypatch):
    """Generate now, score later: a run with the render/score stages off records no eval_hash;
    `evaluate` with the same config renders and scores every asset and records it."""
    from kernels.ply import save_ply
    import fakes
    from pipeline.run import run_batch
    from pipeline.evaluate import evaluate
    from stages.toyworld.catalogue import build_object

    def exact_object(cfg, prompt, seed, asset_dir, progress=False):  # the catalogue object itself
        save_ply(str(Path(asset_dir) / "asset.ply"), build_object(prompt))
        (Path(asset_dir) / "meta.json").write_text(json.dumps({"prompt": prompt, "seed": seed}))
        return fakes.result(asset_dir)

    fakes.use_generate(monkeypatch, exact_object)
    out = str(tmp_path / "run")
    cfg = load_config("toy.yaml", TINY + ["pipeline.render=false", "pipeline.score=false"])
    assert run_batch(prompts, cfg, out, progress=False).done == 1
    [rec] = manifest.read(out).to_pylist()
    assert rec["eval_hash"] is None and rec["toy_psnr"] is None and rec["frames_uri"] is None
    assert evaluate(out, cfg)["rescored"] == 1
    [after] = manifest.read(out).to_pylist()
    assert after["eval_hash"] == eval_hash(cfg) and after["toy_psnr"] > 30  # the object vs itself
    assert after["frames_uri"] and len(list(Path(after["frames_uri"]).glob("*.png"))) == 3


def test_toy_catalogue_enters_by_content_where_generation_reads_it(tmp_path, prompts, monkeypatch):
    from stages import init as init_mod
    from stages.generate import generate
    from stages.toyworld.catalogue import SHIPPED_CATALOGUE

    cat = tmp_path / "catalogue.yaml"
    shutil.copy(SHIPPED_CATALOGUE, cat)
    for base in ({"prior.name": "toy_exact"}, {"init.method": "toy_shape"}):
        cfg = apply_overrides(load_config("toy.yaml"), {**base, "toy.catalogue": str(cat)})
        before = _id(prompts, cfg)
        cat.write_text(cat.read_text() + "\n# edited\n")
        os.utime(cat, ns=(cat.stat().st_mtime_ns + 10**9,) * 2)
        assert _id(prompts, cfg) != before, base

    class Stop(Exception):
        pass

    seen = {}

    def recording_init(cfg, prompt, generator, toy_catalogue=None):
        seen["catalogue"] = toy_catalogue
        raise Stop

    monkeypatch.setattr(init_mod, "init_gaussians", recording_init)
    cfg = load_config("toy.yaml", TINY + ["init.method=toy_shape", f"toy.catalogue={cat}"])
    with pytest.raises(Stop):
        generate(cfg, PROMPT, 0, str(tmp_path / "a"), progress=False)
    assert seen["catalogue"] == str(cat)  # toy_shape draws from the run's catalogue, not the shipped one


# ----------------------------------------------------------------------------------------------
# what is not hashed really does not change the asset
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sds", "ism"])
def test_keys_left_out_of_the_id_leave_the_asset_identical(tmp_path, method):
    """The declarations are true: with every generation key the method, prior and init do not read
    set to another valid value (generate.sctd.* for SDS and ISM, Point-E's init keys for a ball,
    prior.revision for the toy SD, ...), the generated asset is byte for byte the same."""
    from stages.generate import generate

    base = load_config("toy.yaml", TINY + [f"generate.method={method}", "init.ball_num_gaussians=60"])
    other = base
    unread = [k for k in GEN_KEYS if k not in generation_keys(base)]
    assert any(k.startswith("generate.sctd.") for k in unread) and "init.num_points" in unread
    for k in unread:
        try:
            other = _changed(other, k)
        except AssertionError:  # no value valid together with the keys changed before it
            continue
    assert sum(_get(other, k) != _get(base, k) for k in unread) >= len(unread) - 2
    assert generation_keys(other) == generation_keys(base)
    plys = []
    for name, cfg in (("a", base), ("b", other)):
        res = generate(cfg, PROMPT, 3, str(tmp_path / name), progress=False)
        assert res.ok, res.error
        plys.append((tmp_path / name / "asset.ply").read_bytes())
    assert plys[0] == plys[1]


def test_the_worker_records_the_drivers_generation_hash(tmp_path, prompts):
    """A worker generates under the hash the driver put in the asset id, never one it computes
    itself (its Hugging Face cache may resolve a hub id to another commit): meta.json matches the
    id, so the next attempt reuses the asset instead of regenerating it."""
    from pipeline.asset import AssetTask, process_asset

    cfg = load_config("toy.yaml", TINY + ["pipeline.render=false", "pipeline.score=false"])
    [req] = read_prompts(prompts, cfg).requests
    driver = dataclasses.replace(req, generation_hash="d" * 16)   # what the driver computed
    assert driver.generation_hash != req.generation_hash            # (this process computes another)
    process_asset(AssetTask(request=driver, cfg=cfg, out=str(tmp_path)))
    adir = tmp_path / "assets" / req.asset_id[:2] / req.asset_id
    assert json.loads((adir / "meta.json").read_text())["generation_hash"] == "d" * 16
    ply = adir / "asset.ply"
    before = ply.stat().st_mtime_ns
    process_asset(AssetTask(request=driver, cfg=cfg, out=str(tmp_path)))
    assert ply.stat().st_mtime_ns == before   # reused: the same generation, by the driver's hash
