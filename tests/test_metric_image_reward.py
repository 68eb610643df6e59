"""ImageReward path: our port of the package's BLIP model (stages/metrics/blip.py) gives the
scores the image-reward 1.5 package itself computed (stored reference, made once with the old pins
by tests/make_image_reward_reference.py); the state-dict layout is the package's, i.e. the official
checkpoint's; a random-init model built offline (tiny ViT/BERT, small local tokenizer) goes through
the same loading and scoring code as the official checkpoint; missing checkpoint keys are an error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import make_image_reward_reference as refmod
from common.config import MetricsConfig
from stages.metrics import image_reward as ir
from stages.metrics.blip import MedConfig
from stages.metrics.errors import MetricWeightsError

REF = json.loads((Path(__file__).parent / "data" / "image_reward_reference.json").read_text(encoding="utf-8"))
TINY_ARCH = dict(image_size=32, vit_width=48, vit_depth=1, vit_heads=2, patch_size=16)
WORDS = "a an the red blue green yellow cube sphere cone torus toy of view front side back , .".split()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from transformers import BertTokenizer

    d = tmp_path_factory.mktemp("tok")
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(d))
    return str(d)


def tiny_med(tok) -> MedConfig:
    return MedConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)


def tiny_model(tok_dir: str, seed: int = 0) -> ir.ImageRewardModel:
    torch.manual_seed(seed)
    tok = ir.load_tokenizer(tok_dir)
    m = ir.ImageRewardModel(tiny_med(tok), tok, **TINY_ARCH)
    for p in m.mlp.parameters():  # the package inits the MLP with std 1/(d+1): widen it so rewards differ
        torch.nn.init.normal_(p, std=0.5)
    return m.eval()


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def reference_model(tmp_path_factory):
    """The reference's model, rebuilt with our port through the production loader: its med_config
    and vocabulary written to files, its seeded weights saved as a checkpoint."""
    d = tmp_path_factory.mktemp("ir_ref")
    tok = refmod.write_vocab(d / "tok")
    (d / "med_config.json").write_text(json.dumps(REF["med_config"]))
    params = {k: REF["state_dict_shapes"][k] for k in REF["parameters"]}
    state = refmod.random_state(params, REF["seed"])
    for k, v in REF["param_checksum"].items():  # the generator still makes the reference's weights
        assert float(state[k].double().sum()) == pytest.approx(v, rel=1e-6), k
    torch.save(state, d / "ImageReward.pt")
    mc = MetricsConfig(image_reward_checkpoint=str(d / "ImageReward.pt"),
                       image_reward_med_config=str(d / "med_config.json"), image_reward_tokenizer=str(tok),
                       device="cpu", batch_size=3)
    return ir.load_image_reward(mc, arch=REF["arch"])


def test_state_dict_layout_is_the_packages(reference_model):
    """Same names, shapes and parameter/buffer split as the package's model: the official
    ImageReward.pt (saved from that model) loads into ours with nothing missing or left over."""
    ours = {k: list(v.shape) for k, v in reference_model.state_dict().items()}
    assert ours == REF["state_dict_shapes"]
    assert sorted(k for k, _ in reference_model.named_parameters()) == REF["parameters"]


def test_token_ids_equal_the_packages(reference_model):
    tok = reference_model.blip.tokenizer
    assert len(tok) == REF["tokenizer_vocab_size"]
    for prompt, ref in REF["prompts"].items():
        ids = tok(prompt, padding="max_length", truncation=True, max_length=ir.MAX_TOKENS)["input_ids"]
        assert list(ids) == ref["input_ids"], prompt


def test_scores_equal_the_packages_on_fixed_inputs(reference_model):
    """Per-image rewards of 4 images x 4 prompts (incl. a truncated one and an unknown word) equal the
    package's `ImageReward.score` and `inference_rank` on the same weights; batched 3 at a time."""
    ims = refmod.images()
    for prompt, ref in REF["prompts"].items():
        ours = reference_model.rewards(ims, prompt, batch_size=3).numpy()
        np.testing.assert_allclose(ours, ref["score"], rtol=1e-4, atol=1e-5, err_msg=prompt)
        np.testing.assert_allclose(ours, ref["inference_rank"], rtol=1e-4, atol=1e-5, err_msg=prompt)
        assert reference_model.score(ims, prompt, 2) == pytest.approx(float(np.mean(ref["score"])), rel=1e-4, abs=1e-5)
    spread = np.ptp([v["score"] for v in REF["prompts"].values()], axis=1)
    assert (spread > 0.1).all()  # the reference views really differ, so equality is not vacuous


def test_tokenizer_matches_package_conventions(tok_dir):
    tok = ir.load_tokenizer(tok_dir)
    n = len(WORDS) + 5
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [n, n + 1] and len(tok) == n + 2
    assert tok("x [ENC] [DEC]")["input_ids"][2:4] == [n + 1, n]  # kept whole, as special tokens
    ids = tok("a red cube", padding="max_length", truncation=True, max_length=ir.MAX_TOKENS).input_ids
    assert len(ids) == 35 and ids[0] == tok.cls_token_id


def test_batched_scores_equal_one_image_at_a_time(tok_dir):
    m = tiny_model(tok_dir)
    ims = images(5)
    ours = m.rewards(ims, "a red cube", batch_size=2)
    one = torch.cat([m.rewards([im], "a red cube") for im in ims])
    np.testing.assert_allclose(ours.numpy(), one.numpy(), rtol=1e-4, atol=1e-5)
    assert ours.std() > 0  # the views really differ
    assert m.score(ims, "a red cube") == pytest.approx(float(ours.mean()), rel=1e-5)
    assert not torch.allclose(m.rewards(ims, "a blue sphere"), ours)


def test_checkpoint_round_trip_through_the_production_loader(tok_dir, tmp_path):
    src = tiny_model(tok_dir, seed=1)
    ck = tmp_path / "ImageReward.pt"
    torch.save(src.state_dict(), ck)
    # The production loader (tokenizer, file checks, key checks, torch.load), tiny vision tower.
    from dataclasses import asdict

    med = tmp_path / "med_config.json"
    med.write_text(json.dumps(asdict(tiny_med(src.blip.tokenizer))))
    mc = MetricsConfig(image_reward_checkpoint=str(ck), image_reward_med_config=str(med),
                       image_reward_tokenizer=tok_dir, device="cpu", batch_size=3)
    m = ir.load_image_reward(mc, arch=TINY_ARCH)
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    ims = images(4, seed=3)
    assert ir.load_image_reward(mc, arch=TINY_ARCH).score(ims, "a toy cube", 3) == pytest.approx(src.score(ims, "a toy cube"), rel=1e-5)

    sd = src.state_dict()
    sd.pop("blip.text_encoder.encoder.layer.0.crossattention.self.key.weight")
    torch.save(sd, tmp_path / "truncated.pt")
    fresh = tiny_model(tok_dir)
    with pytest.raises(MetricWeightsError, match=r"lacks 1 .*crossattention"):
        fresh.load_checkpoint(torch.load(tmp_path / "truncated.pt", weights_only=True), "truncated.pt")


def test_missing_files_fail_fast_naming_metric_and_key(tmp_path, tok_dir):
    with pytest.raises(MetricWeightsError, match=r"image_reward.*nope\.pt.*metrics\.image_reward_checkpoint"):
        ir.load_image_reward(MetricsConfig(image_reward_checkpoint=str(tmp_path / "nope.pt")))
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(MetricWeightsError, match=r"metrics\.image_reward_med_config"):
        ir.load_image_reward(MetricsConfig(image_reward_checkpoint=str(tmp_path / "x.pt"),
                                           image_reward_med_config=str(tmp_path / "none.json")))
    with pytest.raises(MetricWeightsError, match=r"metrics\.image_reward_tokenizer"):
        ir.load_tokenizer(str(tmp_path / "no_tokenizer_here"))
