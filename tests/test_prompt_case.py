"""Case-only prompt variants are one asset where the prior's tokenizer lowercases (issue 26 item 8).

The decision is asked of the tokenizer itself (stages.priors.registry.prompt_lowercased). Checked
with the real tokenizers: the toy SD's CLIPTokenizer, and SD 2.1's vocabulary (OpenCLIP's BPE file,
shipped with open_clip) both through open_clip's own tokenizer (what SD 2.1's text encoder was
trained with) and through transformers' CLIPTokenizer in SD 2.1's diffusers `tokenizer/` layout,
read from a local folder and from the Hugging Face cache."""

import gzip
import json

import pytest

from common.config import Config, load_config
from pipeline.inputs import asset_id_for, read_prompts
from stages.priors import registry, tokens

VARIANTS = ["a red cube", "A Red Cube", "A RED CUBE", "a  Red\tcube "]
SD21_TOKENIZER_CONFIG = {  # stabilityai/stable-diffusion-2-1(-base) tokenizer/tokenizer_config.json
    "add_prefix_space": False, "bos_token": "<|startoftext|>", "do_lower_case": True,
    "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77, "pad_token": "!",
    "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>"}


@pytest.fixture(autouse=True)
def _fresh_decisions():
    tokens._lowercased.cache_clear()
    yield
    tokens._lowercased.cache_clear()


@pytest.fixture(scope="module")
def cfg():
    return load_config("toy.yaml", ["pipeline.score=false"])


def _write(tmp_path, lines, name="p.txt"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_case_only_variants_are_one_asset_with_a_lowercasing_tokenizer(tmp_path, cfg):
    assert registry.prompt_lowercased(cfg.prior)  # the toy SD's CLIP tokenizer lowercases
    b = read_prompts(_write(tmp_path, VARIANTS + ["A Blue Sphere"]), cfg)
    assert [r.prompt for r in b.requests] == ["a red cube", "A Blue Sphere"] and b.duplicates == 3
    # an all-lowercase prompt's id is what it always was (computed without lowercasing)
    red = b.requests[0]
    assert red.asset_id == asset_id_for("a red cube", red.seed, red.generation_hash)
    # the first row's text is kept (with its case): the manifest shows what the user wrote
    b2 = read_prompts(_write(tmp_path, ["A Red Cube", "a red cube"], "q.txt"), cfg)
    assert [r.prompt for r in b2.requests] == ["A Red Cube"] and b2.duplicates == 1
    assert b2.requests[0].asset_id == red.asset_id
    # case is the only thing folded: other words, seeds stay apart
    b3 = read_prompts(_write(tmp_path, ["A Red Cube", "a red cubes"], "r.txt"), cfg)
    assert len({r.asset_id for r in b3.requests}) == 2


def test_case_kept_when_no_tokenizer_can_be_read(tmp_path, monkeypatch):
    """The default SD hub id with an empty Hugging Face cache: nothing is merged on a guess."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert not registry.prompt_lowercased(Config().prior)
    b = read_prompts(_write(tmp_path, VARIANTS), Config())
    shown = ["a red cube", "A Red Cube", "A RED CUBE", "a Red cube"]
    assert [r.prompt for r in b.requests] == shown and b.duplicates == 0
    g = b.requests[0].generation_hash
    assert [r.asset_id for r in b.requests] == [asset_id_for(p, Config().generate.seed, g)
                                                for p in shown]


def test_the_probe_tells_a_cased_tokenizer_from_a_lowercasing_one():
    assert not tokens.lowercases(str.split)
    assert tokens.lowercases(lambda s: s.lower().split())


def test_toy_exact_looks_prompts_up_case_insensitively():
    from common.config import PriorConfig

    assert registry.prompt_lowercased(PriorConfig(name="toy_exact"))


def _sd21_vocabulary():
    """SD 2.1's tokenizer files (vocab.json, merges.txt) from OpenCLIP's BPE file, built the way
    open_clip's SimpleTokenizer builds its vocabulary."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab)}, merges


def _sd21_tokenizer_folder(root):
    vocab, merges = _sd21_vocabulary()
    tok = root / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (tok / "tokenizer_config.json").write_text(json.dumps(SD21_TOKENIZER_CONFIG))
    (tok / "special_tokens_map.json").write_text(json.dumps(
        {k: SD21_TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}))
    return root


def test_sd21_tokenizer_lowercases(tmp_path, monkeypatch):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    from common.config import PriorConfig

    oc = SimpleTokenizer()  # SD 2.1's text encoder (OpenCLIP ViT-H/14) was trained with this one
    assert len({tuple(oc.encode(v)) for v in VARIANTS}) == 1
    assert tokens.lowercases(oc.encode)
    folder = _sd21_tokenizer_folder(tmp_path / "sd21")
    hf = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    assert len(hf) == 49408  # SD 2.1's vocabulary size
    # the same vocabulary: transformers' ids equal open_clip's for the probe (between BOS and EOS)
    assert hf(tokens.CASE_PROBE).input_ids[1:-1] == oc.encode(tokens.CASE_PROBE)
    assert len({tuple(hf(v).input_ids) for v in VARIANTS}) == 1
    # a local SD 2.1 diffusers folder ...
    assert registry.prompt_lowercased(PriorConfig(name="stable_diffusion", model=str(folder)))
    # ... and the hub id, from the local Hugging Face cache (never the network)
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    repo = cache / "models--sd2-community--stable-diffusion-2-1-base"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _sd21_tokenizer_folder(repo / "snapshots" / commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    tokens._lowercased.cache_clear()
    assert registry.prompt_lowercased(Config().prior)
