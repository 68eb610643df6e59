"""ImageReward path: a random-init model built offline (tiny ViT/BERT, small local tokenizer) goes
through the same loading and scoring code as the official checkpoint; it agrees with the
image-reward package's own per-image scoring; missing checkpoint keys are an error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common.config import MetricsConfig
from stages.metrics import image_reward as ir
from stages.metrics.errors import MetricWeightsError

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


def tiny_model(tok_dir: str, seed: int = 0) -> ir.ImageRewardModel:
    from ImageReward.models.BLIP.med import BertConfig

    torch.manual_seed(seed)
    tok = ir.load_tokenizer(tok_dir)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, add_cross_attention=True)
    m = ir.ImageRewardModel(cfg, tok, **TINY_ARCH)
    for p in m.mlp.parameters():  # the package inits the MLP with std 1/(d+1): widen it so rewards differ
        torch.nn.init.normal_(p, std=0.5)
    return m.eval()


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_tokenizer_matches_package_conventions(tok_dir):
    tok = ir.load_tokenizer(tok_dir)
    assert "[DEC]" in tok.get_vocab() and "[ENC]" in tok.get_vocab() and tok.enc_token_id == tok.convert_tokens_to_ids("[ENC]")
    ids = tok("a red cube", padding="max_length", truncation=True, max_length=ir.MAX_TOKENS).input_ids
    assert len(ids) == 35 and ids[0] == tok.cls_token_id


def test_batched_scores_equal_the_package_scoring(tok_dir):
    from ImageReward.ImageReward import ImageReward as PackageImageReward

    m = tiny_model(tok_dir)
    ims = images(5)
    ours = m.rewards(ims, "a red cube", batch_size=2)
    with torch.no_grad():  # the package's own per-image loop, run on this model
        _, theirs = PackageImageReward.inference_rank(m, "a red cube", ims)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-4, atol=1e-5)
    assert ours.std() > 0  # the views really differ
    assert m.score(ims, "a red cube") == pytest.approx(float(ours.mean()), rel=1e-5)
    assert not torch.allclose(m.rewards(ims, "a blue sphere"), ours)


def test_checkpoint_round_trip_through_the_production_loader(tok_dir, tmp_path):
    src = tiny_model(tok_dir, seed=1)
    ck = tmp_path / "ImageReward.pt"
    torch.save(src.state_dict(), ck)
    # The production loader (tokenizer, file checks, key checks, torch.load), tiny vision tower.
    from ImageReward.models.BLIP.med import BertConfig

    med = tmp_path / "med_config.json"
    BertConfig(vocab_size=len(src.blip.tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64, add_cross_attention=True).to_json_file(str(med))
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
