"""Method, prior and init names: the registries are the one list the config is checked against.

The config layer (`common.config`) no longer carries its own copy of the names; `pipeline.validate
.check_names` checks them against `stages.methods.METHODS`, `stages.priors.registry.PRIORS` and
`stages.init.INIT_METHODS` wherever the orchestrator loads a config for use."""

from __future__ import annotations

import json

import pytest
import torch

import stages.methods as methods
import stages.init as init_mod
import stages.priors.registry as registry
from common.config import ConfigError, PriorConfig, load_config
from pipeline.inputs import read_prompts
from pipeline.validate import REGISTERED, check_names
from cli_capture import run_cli as cli


@pytest.mark.parametrize("key,bad,near,registered", [
    ("generate.method", "sdss", "sds", methods.METHODS),
    ("prior.name", "toy_sdd", "toy_sd", registry.PRIORS),
    ("init.method", "bal", "ball", init_mod.INIT_METHODS),
])
def test_a_bad_name_is_one_line_with_a_did_you_mean_and_the_registered_names(key, bad, near, registered):
    code, out, err = cli("config", "--config", "toy.yaml", "--set", f"{key}={bad}")
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, (code, out, err)
    line = lines[0]
    assert line.startswith(f"sctd3d config: error: --set {key}={bad}: {key}: {bad!r} is not a registered ")
    assert f"(did you mean {near!r}?)" in line
    assert line.endswith("registered: " + ", ".join(sorted(registered)))


def test_a_bad_name_in_a_config_file_names_the_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: toy.yaml\ngenerate:\n  method: zzz\n")
    with pytest.raises(ConfigError) as e:
        check_names(load_config(p))
    msg = str(e.value)
    assert msg.startswith("base.yaml <- toy.yaml <- mine.yaml: generate.method: 'zzz' is not a registered")  # as common.config names sources
    assert "did you mean" not in msg


def test_the_config_layer_itself_has_no_list_of_names():
    """Loading (types, bounds) accepts any string; only check_names knows the names."""
    cfg = load_config("toy.yaml", ["generate.method=not_a_method", "prior.name=nope", "init.method=nope"])
    assert (cfg.generate.method, cfg.prior.name, cfg.init.method) == ("not_a_method", "nope", "nope")
    with pytest.raises(ConfigError, match="generate.method"):
        check_names(cfg)


def test_a_name_added_to_a_registry_is_valid_without_touching_the_config(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "my_method", methods.METHODS["sds"])
    code, out, err = cli("config", "--config", "toy.yaml", "--set", "generate.method=my_method")
    assert code == 0 and "method: my_method" in out, err

    monkeypatch.setitem(init_mod.INIT_METHODS, "my_init", init_mod.INIT_METHODS["ball"])
    cfg = check_names(load_config("toy.yaml", ["init.method=my_init"]))
    g = init_mod.init_gaussians(cfg.init, "a red cube", torch.Generator().manual_seed(0))
    assert g.num() == cfg.init.ball_num_gaussians

    with pytest.raises(ConfigError, match="prior.name: 'my_prior'"):
        check_names(load_config("toy.yaml", ["prior.name=my_prior"]))
    sentinel = object()
    seen = {}

    def loader(pc, device, toy):
        seen.update(name=pc.name, device=device, toy=toy)
        return sentinel

    monkeypatch.setitem(registry.PRIORS, "my_prior", registry.PriorSpec("my_prior", loader))
    cfg = check_names(load_config("toy.yaml", ["prior.name=my_prior", "prior.device=cpu"]))
    assert "my_prior" in REGISTERED["prior.name"][1]()
    assert registry.load_prior(cfg.prior, toy=cfg.toy) is sentinel
    assert seen == {"name": "my_prior", "device": torch.device("cpu"), "toy": cfg.toy}


def test_load_prior_names_the_registered_priors_for_an_unknown_name():
    with pytest.raises(ValueError, match=r"prior.name='nope' is unknown; use one of stable_diffusion, toy_exact, toy_sd"):
        registry.load_prior(PriorConfig(name="nope", device="cpu"))


def test_a_prompt_row_with_a_bad_method_is_rejected_with_the_reason(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "a red cube", "config": {"generate.method": "sctdd"}}) + "\n"
                 + json.dumps({"prompt": "a blue cube", "config": {"generate.method": "ism"}}) + "\n")
    batch = read_prompts(str(p), load_config("toy.yaml"))
    assert [r.prompt for r in batch.requests] == ["a blue cube"]
    [rej] = batch.rejected
    assert "row config: generate.method: 'sctdd' is not a registered" in rej.reason and "'sctd'" in rej.reason


def test_run_batch_refuses_a_bad_name_before_writing_anything(tmp_path):
    from pipeline.run import run_batch

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "out"
    cfg = load_config("toy.yaml", ["generate.method=nope"])
    with pytest.raises(ConfigError, match="generate.method: 'nope'"):
        run_batch(str(prompts), cfg, str(out), progress=False)
    assert not out.exists() or not any(out.iterdir())
