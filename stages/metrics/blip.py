"""The BLIP pieces ImageReward scores with: the ViT image encoder and the BERT text encoder with
cross-attention to the image tokens ("med"), ported from the image-reward 1.5 package
(ImageReward/models/BLIP/vit.py and med.py, themselves BLIP's) to plain torch.

Why a port: the package's med.py imports transformers internals removed in transformers 4.56
(`apply_chunking_to_forward`, ...), so it cannot run next to transformers 5. Only what scoring runs
is ported (eval mode, encoder only, absolute positions, no caches, no head pruning, no gradient
checkpointing); dropout and drop-path are the identity in eval, so they are left out. Module and
parameter names are the package's, so the official ImageReward.pt loads as is (the test compares
the state-dict layout and the scores against numbers the package computed,
tests/data/image_reward_reference.json).

Numerics kept on purpose: the self-attention padding mask adds -10000 (the package's
`get_extended_attention_mask`), the image-token mask adds finfo.min where 0 (transformers'
`invert_attention_mask`; all image tokens are attended, so it is 0), ViT LayerNorm eps 1e-6,
BERT LayerNorm eps from the config (1e-12 in the official one).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_ACTS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
         "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


@dataclass
class MedConfig:
    """The keys of BLIP's med_config.json that the text encoder reads (others are ignored)."""

    vocab_size: int = 30524
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    encoder_width: int = 768
    add_cross_attention: bool = True
    position_embedding_type: str = "absolute"

    @classmethod
    def from_dict(cls, d: dict) -> "MedConfig":
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        if cfg.position_embedding_type != "absolute":
            raise ValueError(f"med_config position_embedding_type={cfg.position_embedding_type!r}: only "
                             f"'absolute' (the official ImageReward config) is supported")
        if cfg.hidden_act not in _ACTS:
            raise ValueError(f"med_config hidden_act={cfg.hidden_act!r}: one of {sorted(_ACTS)}")
        if not cfg.add_cross_attention:
            raise ValueError("med_config add_cross_attention=false: ImageReward's text encoder "
                             "cross-attends to the image; use the official med_config.json")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"med_config hidden_size {cfg.hidden_size} is not a multiple of "
                             f"num_attention_heads {cfg.num_attention_heads}")
        return cfg

    @classmethod
    def from_json_file(cls, path: str | Path) -> "MedConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# ---- the ViT image encoder (vit.py) ----

class _PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"image size {tuple(x.shape[-2:])} != the model's {self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class _VitMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _VitAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _VitBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _VitAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _VitMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """BLIP's ViT (pre-norm blocks, [CLS] + patch tokens, final LayerNorm); returns all tokens."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = _PatchEmbed(img_size, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList([_VitBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed[:, :x.shape[1], :]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# ---- the BERT text encoder with cross-attention (med.py) ----

class _Embeddings(nn.Module):
    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        # persistent, as in the package: the official checkpoint carries it
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings).expand((1, -1)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[:, :input_ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos))


class _SelfAttention(nn.Module):
    def __init__(self, cfg: MedConfig, cross: bool):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_size = cfg.hidden_size // cfg.num_attention_heads
        kv_in = cfg.encoder_width if cross else cfg.hidden_size
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_in, cfg.hidden_size)
        self.value = nn.Linear(kv_in, cfg.hidden_size)

    def _heads(self, x):
        return x.view(*x.shape[:-1], self.num_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, hidden, mask, context=None):
        kv = hidden if context is None else context
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(kv)), self._heads(self.value(kv))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + mask
        ctx = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(*ctx.shape[:-2], self.num_heads * self.head_size)


class _DenseNorm(nn.Module):
    """`dense` then LayerNorm of (out + residual): BertSelfOutput / BertOutput."""

    def __init__(self, cfg: MedConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: MedConfig, cross: bool = False):
        super().__init__()
        self.self = _SelfAttention(cfg, cross)
        self.output = _DenseNorm(cfg, cfg.hidden_size)

    def forward(self, hidden, mask, context=None):
        return self.output(self.self(hidden, mask, context), hidden)


class _Intermediate(nn.Module):
    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _ACTS[cfg.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.attention = _Attention(cfg)
        self.crossattention = _Attention(cfg, cross=True)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg, cfg.intermediate_size)

    def forward(self, hidden, mask, image, image_mask):
        h = self.attention(hidden, mask)
        h = self.crossattention(h, image_mask, image)  # mode='multimodal'
        return self.output(self.intermediate(h), h)


class _Encoder(nn.Module):
    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(cfg) for _ in range(cfg.num_hidden_layers)])


class BertModel(nn.Module):
    """med.py's BertModel without pooler, in 'multimodal' mode: text tokens self-attend, then
    cross-attend to the image tokens, in every layer. Returns the last hidden states."""

    def __init__(self, cfg: MedConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        for m in self.modules():  # BertPreTrainedModel._init_weights (random init only; checkpoints overwrite)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                image_atts: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.embeddings.LayerNorm.weight.dtype
        mask = (1.0 - attention_mask[:, None, None, :].to(dtype)) * -10000.0
        if image_atts is None:
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        image_mask = (1.0 - image_atts[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        h = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            h = layer(h, mask, image_embeds, image_mask)
        return h
