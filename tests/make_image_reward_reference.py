"""Make tests/data/image_reward_reference.json: ImageReward scores computed by the image-reward 1.5
package itself, for tests/test_metric_image_reward.py to compare our port (stages/metrics/blip.py)
against. Run ONCE with the old pins (image-reward needs transformers < 4.56):

    python3.11 -m venv /tmp/ir-ref && /tmp/ir-ref/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        transformers==4.55.4 huggingface-hub==0.36.2 timm==1.0.31 fairscale==0.4.13 datasets==5.0.1 \
        openai-clip==1.0.1 "setuptools<81" numpy pillow \
        && /tmp/ir-ref/bin/pip install --no-deps image-reward==1.5
    PYTHONPATH=tests /tmp/ir-ref/bin/python tests/make_image_reward_reference.py tests/data/image_reward_reference.json

(the stored file was made with the project's venv of 2026-12-03 at those pins: transformers 4.55.4,
image-reward 1.5, torch 2.14.1, torchvision 0.29.1, timm 1.0.31, pillow 13.0.0, numpy 2.4.6).

The model is the package's own `ImageReward.ImageReward` class; only its two hub-bound / large
pieces are swapped before it is built: BLIP's `create_vit` (ViT-L -> a 1-block ViT of width 48 at
the official 224 px / patch 16) and `init_tokenizer` (the hub's bert-base-uncased -> a tiny local
vocabulary, same BertTokenizer class and the same [DEC]/[ENC] additions). The text encoder is the
package's BERT from the stored med_config (hidden 768, as its `MLP(768)` head requires, 1 layer).
Every parameter is then overwritten from a seeded generator (`random_state`, shared with the test),
so the test rebuilds the same weights without storing them. Scores come from the package's own
`ImageReward.score` (one image) and `ImageReward.inference_rank` (a list).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SEED = 20261203
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a an the of and with on in red blue green yellow white black cube sphere cone torus chair lamp toy "
    "small big wooden metal shiny , . ! - ##s ##ed ##ing ##er".split())
MED_CONFIG = {  # the official med_config.json's keys, tiny sizes (hidden 768: the package's MLP(768))
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 96,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 1, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(VOCAB) + 2,
    "encoder_width": 48, "add_cross_attention": True}
ARCH = dict(image_size=224, vit_width=48, vit_depth=1, vit_heads=2, patch_size=16)
PROMPTS = ["a red cube", "A Shiny Blue sphere, on a wooden chair!",
           "a small toy lamp with a big green cone and a metal torus " * 3,  # > 35 tokens: truncated
           "an unknownword of yellow"]


def images() -> list:
    """Four RGB images of different sizes / aspect ratios (resize + centre crop differ), integer
    arithmetic only, so they are the same on every platform."""
    from PIL import Image

    out = []
    for k, (w, h) in enumerate([(224, 224), (300, 200), (97, 131), (512, 512)]):
        y, x = np.mgrid[0:h, 0:w].astype(np.int64)
        chans = [(x * (3 + k) + y * (5 + c) + 37 * c * k + (x * y) % (11 + c)) % 256 for c in range(3)]
        out.append(Image.fromarray(np.stack(chans, -1).astype(np.uint8), "RGB"))
    return out


def random_state(shapes: dict[str, list[int]], seed: int = SEED) -> dict:
    """Seeded values for every parameter (sorted by name); norms' weights near 1. numpy only."""
    import torch

    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        v = rng.standard_normal(shapes[name]).astype(np.float32)
        leaf = name.rsplit(".", 1)[-1]
        is_norm = "norm" in name.lower() and leaf in ("weight", "bias")
        if is_norm and leaf == "weight":
            v = 1.0 + 0.1 * v
        elif name.endswith(("cls_token", "pos_embed")) or "embeddings" in name:
            v = 0.5 * v
        else:
            fan_in = int(np.prod(shapes[name][1:])) if len(shapes[name]) > 1 else shapes[name][0]
            v = v / np.sqrt(fan_in) if leaf == "weight" else 0.1 * v
        out[name] = torch.from_numpy(v)
    return out


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return folder


def main(out_path: str) -> None:
    import importlib
    import tempfile

    import timm
    import torch
    import torchvision
    import transformers
    import PIL
    from ImageReward.models.BLIP import blip_pretrain
    from ImageReward.models.BLIP.vit import VisionTransformer
    from transformers import BertTokenizer

    ir_mod = importlib.import_module("ImageReward.ImageReward")  # the module (the package rebinds the name)
    tmp = Path(tempfile.mkdtemp())
    tok_dir = write_vocab(tmp / "tok")
    (tmp / "med_config.json").write_text(json.dumps(MED_CONFIG))

    def tiny_vit(vit, image_size, *args, **kw):  # BLIP's create_vit with a 1-block ViT
        return VisionTransformer(img_size=image_size, patch_size=ARCH["patch_size"], embed_dim=ARCH["vit_width"],
                                 depth=ARCH["vit_depth"], num_heads=ARCH["vit_heads"], drop_path_rate=0.1), ARCH["vit_width"]

    def local_tokenizer():  # BLIP's init_tokenizer, same steps, local vocabulary
        tok = BertTokenizer.from_pretrained(str(tok_dir))
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tok.enc_token_id = tok.additional_special_tokens_ids[0]
        return tok

    blip_pretrain.create_vit = tiny_vit
    blip_pretrain.init_tokenizer = local_tokenizer
    model = ir_mod.ImageReward(med_config=str(tmp / "med_config.json"), device="cpu").eval()
    sd = model.state_dict()
    params = {k for k, _ in model.named_parameters()}
    shapes = {k: list(v.shape) for k, v in sd.items()}
    state = random_state({k: shapes[k] for k in params})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == set(sd) - params, (missing, unexpected)
    ims = images()
    with torch.no_grad():
        per_prompt = {}
        for p in PROMPTS:
            single = [model.score(p, im) for im in ims]
            _, ranked = model.inference_rank(p, ims)
            ids = model.blip.tokenizer(p, padding="max_length", truncation=True, max_length=35).input_ids
            per_prompt[p] = {"input_ids": ids, "score": single, "inference_rank": ranked}
    checksum = {k: float(state[k].double().sum()) for k in sorted(state)[:3]}
    ref = {
        "made_by": "tests/make_image_reward_reference.py (see its docstring for the exact command)",
        "versions": {"image-reward": "1.5", "transformers": transformers.__version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "timm": timm.__version__, "pillow": PIL.__version__,
                     "numpy": np.__version__},
        "seed": SEED, "arch": ARCH, "med_config": MED_CONFIG, "vocab": VOCAB,
        "tokenizer_vocab_size": len(model.blip.tokenizer),
        "state_dict_shapes": shapes, "parameters": sorted(params), "param_checksum": checksum,
        "prompts": per_prompt,
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out_path} with transformers {transformers.__version__}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/image_reward_reference.json")
