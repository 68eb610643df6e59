"""CLIP-L score: equals an independent cosine computation, batching-invariant, clear weight errors."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from common.config import MetricsConfig
from stages.metrics.clip import ClipScorer, load_clip
from stages.metrics.errors import MetricWeightsError


def tiny_clip() -> torch.nn.Module:
    """A random-init open_clip CLIP (ViT + text transformer), small enough for CI."""
    torch.manual_seed(0)
    return open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ).eval()


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def parts():
    return tiny_clip(), open_clip.image_transform(32, is_train=False), open_clip.get_tokenizer("ViT-L-14")


def test_equals_independent_cosine(parts):
    model, pre, tok = parts
    ims, prompt = images(5), "a red cube"
    got = ClipScorer(model, pre, tok, batch_size=2).per_view(ims, prompt)
    with torch.no_grad():
        fi = model.encode_image(torch.stack([pre(im) for im in ims])).numpy().astype(np.float64)
        ft = model.encode_text(tok([prompt])).numpy().astype(np.float64)[0]
    cos = fi @ ft / (np.linalg.norm(fi, axis=1) * np.linalg.norm(ft))
    np.testing.assert_allclose(got.numpy(), 100 * cos, rtol=1e-4, atol=1e-3)
    scorer = ClipScorer(model, pre, tok)
    assert scorer.score(ims, prompt) == pytest.approx(max(100 * cos.mean(), 0.0), rel=1e-4, abs=1e-3)


def test_real_tokenizer_is_used(parts):
    model, pre, tok = parts
    t = tok(["a red cube"])
    assert t.shape == (1, 77) and int(t[0, 0]) == 49406  # <start_of_text> of the shipped BPE
    s = ClipScorer(model, pre, tok)
    assert not torch.allclose(s.text_features("a red cube"), s.text_features("a blue sphere"))


def test_batching_does_not_change_values(parts):
    model, pre, tok = parts
    ims = images(7, seed=1)
    ref = ClipScorer(model, pre, tok, batch_size=1).per_view(ims, "a toy")
    for bs in (3, 16):
        torch.testing.assert_close(ClipScorer(model, pre, tok, batch_size=bs).per_view(ims, "a toy"), ref,
                                   rtol=1e-4, atol=1e-3)


def test_score_is_clipped_at_zero(parts):
    model, pre, tok = parts

    class FakeNegativeScorer(ClipScorer):
        def per_view(self, images, prompt):
            return torch.tensor([-5.0, -1.0])

    assert FakeNegativeScorer(model, pre, tok).score(images(2), "p") == 0.0


def test_missing_weights_fail_fast_naming_metric_and_key(tmp_path):
    missing = str(tmp_path / "ViT-L-14.pt")
    with pytest.raises(MetricWeightsError, match=r"clip_l.*ViT-L-14\.pt.*metrics\.clip_pretrained"):
        load_clip(MetricsConfig(clip_pretrained=missing, device="cpu"))
    with pytest.raises(MetricWeightsError, match=r"clip_l.*no-such-tag.*metrics\.clip_pretrained"):
        load_clip(MetricsConfig(clip_model="ViT-B-32", clip_pretrained="no-such-tag", device="cpu"))
    with pytest.raises(MetricWeightsError, match="random-init"):
        load_clip(MetricsConfig(clip_pretrained="", device="cpu"))


def test_local_checkpoint_file_loads(tmp_path, parts):
    """A local open_clip state dict goes through load_clip (the offline-cluster path)."""
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    s = load_clip(MetricsConfig(clip_model="ViT-B-32", clip_pretrained=str(path), clip_quick_gelu=False,
                                device="cpu", batch_size=2))
    for k, v in model.state_dict().items():
        assert torch.equal(s.model.state_dict()[k], v), k
    assert np.isfinite(s.score(images(2), "a cube"))
