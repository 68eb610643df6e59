"""What the two toy SD recipes share: the UNet + text encoder trainer, its data and its safety nets.

`fit_unet` trains a tokenizer + CLIP text encoder + UNet2DConditionModel on pixels (`pixel`) or on
VAE latents (`latent`) with EMA weights and a divergence guard (`DivergenceGuard`), and saves a
diffusers directory. `resolve_out_dir` keeps `sctd3d toy train-prior` out of the installed package
unless asked. `nearest_object` scores samples against the ground-truth views (tests, benchmarks).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stages.toyworld.views import ViewParams, catalogue_views

log = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX_WORDS = ["front", "side", "back", "view"]
BETA_START, BETA_END, T_TRAIN = 0.00085, 0.012, 1000


@dataclass
class TrainParams:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3  # constant after warm-up: a checkpoint at step k equals a k-step run
    warmup: int = 30
    ema_decay: float = 0.998
    checkpoint_every: int = 250  # EMA weights saved to out_dir every this many steps
    p_empty: float = 0.1  # empty-prompt dropout: trains the null embedding for CFG
    p_bare: float = 0.1  # prompt without a view suffix
    seed: int = 0
    num_views: int = 256
    resolution: int = 32
    max_tokens: int = 32
    # architecture
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    attn_levels: int = 1  # cross-attention on this many of the lowest-resolution levels
    text_hidden: int = 64
    text_layers: int = 2
    threads: int = 0  # 0 = torch default
    save_dtype: str = "fp32"  # storage dtype of the UNet weights (EMA kept in fp32; loaders upcast)
    # divergence guard: at constant lr 2e-3 a reproduction of the 5000-step latent UNet blew up at step
    # ~4955 (loss 0.04 -> 1.0 within 10 steps; benchmarks/RESULTS.md). When the mean loss of the last
    # `guard_window` steps exceeds `guard_factor` x the median of the `guard_history` steps before them (or
    # a loss is not finite), model, optimizer and EMA go back to the last snapshot (taken every
    # `guard_every` healthy steps) and training continues on fresh batches; a run that never spikes is
    # unchanged. More than `guard_max_rollbacks` rollbacks stop the run with an error.
    guard_every: int = 100
    guard_window: int = 10
    guard_history: int = 200
    guard_factor: float = 5.0
    guard_max_rollbacks: int = 5


# ----------------------------------------------------------------------------------------------
# Tokenizer: a small CLIP BPE vocabulary covering the catalogue's words (characters as fallback)
# ----------------------------------------------------------------------------------------------
def _words(prompts: list[str]) -> list[str]:
    out: dict[str, None] = {}
    for p in prompts + SUFFIX_WORDS:
        for w in re.findall(r"[a-z]+", p.lower()):
            out[w] = None
    return list(out)


def write_tokenizer(out_dir: Path, prompts: list[str], max_tokens: int) -> None:
    """vocab.json + merges.txt for `CLIPTokenizer`: every catalogue word is one token."""
    chars = [chr(c) for c in range(33, 127)]
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for w in _words(prompts):
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        cur = syms[0]
        for s in syms[1:]:
            if (cur, s) not in merges:
                merges.append((cur, s))
            cur = cur + s
            vocab.setdefault(cur, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    tdir = out_dir / "tokenizer"
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (tdir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), bos_token=BOS, eos_token=EOS,
                        pad_token=EOS, unk_token=EOS, model_max_length=max_tokens)
    tok.save_pretrained(str(tdir))


def training_prompt(prompt: str, azimuth_deg: float, u: float, p: TrainParams) -> str:
    from stages.view_words import view_suffix

    if u < p.p_empty:
        return ""
    if u < p.p_empty + p.p_bare:
        return prompt
    return prompt + view_suffix(azimuth_deg)


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, T_TRAIN, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def build_models(p: TrainParams, vocab_size: int, bos_id: int, eos_id: int, channels: int, sample_size: int):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    n = len(p.block_out_channels)
    if not 1 <= p.attn_levels <= n:
        raise ValueError(f"attn_levels={p.attn_levels} must be between 1 and {n} (the number of UNet levels)")
    k = p.attn_levels
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=tuple(p.block_out_channels),
        down_block_types=tuple(["DownBlock2D"] * (n - k) + ["CrossAttnDownBlock2D"] * k),
        up_block_types=tuple(["CrossAttnUpBlock2D"] * k + ["UpBlock2D"] * (n - k)),
        cross_attention_dim=p.text_hidden, attention_head_dim=8, norm_num_groups=8,
    )
    tcfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=p.text_hidden, intermediate_size=2 * p.text_hidden,
                          num_hidden_layers=p.text_layers, num_attention_heads=4,
                          max_position_embeddings=p.max_tokens, bos_token_id=bos_id, eos_token_id=eos_id,
                          pad_token_id=eos_id, projection_dim=p.text_hidden)
    return unet, CLIPTextModel(tcfg)


def _write_scheduler_and_index(out_dir: Path) -> None:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END,
                          beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1, prediction_type="epsilon")
    sched.save_pretrained(str(out_dir / "scheduler"))
    import diffusers

    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": [None, None]}
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")




def training_views(cat, p: TrainParams, cache_dir: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (N, 3, H, W) in [-1, 1], azimuths in degrees, object index) of every catalogue view."""
    t0 = time.perf_counter()
    views = catalogue_views(ViewParams(num_views=p.num_views, resolution=p.resolution), cat, cache_dir)
    images = torch.cat([v.chw() for v in views]) * 2.0 - 1.0
    az = torch.cat([v.azimuth_deg for v in views])
    labels = torch.cat([torch.full((len(v.images),), i) for i, v in enumerate(views)])
    log.info("toy SD: %d views of %d objects (%.1f s)", len(images), len(views), time.perf_counter() - t0)
    return images, az, labels


class DivergenceError(RuntimeError):
    """Training kept diverging after the allowed rollbacks; the message names the steps and what to change."""


class DivergenceGuard:
    """Snapshots of (model, optimizer, EMA) and a loss-spike test; see TrainParams.guard_*."""

    def __init__(self, p: TrainParams, modules: list, opt, ema: dict) -> None:
        self.p, self.modules, self.opt, self.ema = p, modules, opt, ema
        self.rollbacks: list[int] = []
        self.snapshot: tuple | None = None
        self.snap_step = 0
        self.take(0)

    def take(self, step: int) -> None:
        import copy

        self.snapshot = (copy.deepcopy([m.state_dict() for m in self.modules]),
                         copy.deepcopy(self.opt.state_dict()), {k: v.clone() for k, v in self.ema.items()})
        self.snap_step = step

    def diverged(self, losses: list[float], factor: float | None = None) -> bool:
        p = self.p
        if not math.isfinite(losses[-1]):
            return True
        if len(losses) < p.guard_window + p.guard_history:
            return False
        recent = sum(losses[-p.guard_window:]) / p.guard_window
        before = sorted(losses[-(p.guard_window + p.guard_history):-p.guard_window])
        return recent > (factor or p.guard_factor) * before[len(before) // 2]

    def maybe_take(self, step: int, losses: list[float]) -> None:
        """Snapshot at `step` unless the loss is already rising (half the spike factor): a snapshot
        taken at the onset of a spike would be rolled back to."""
        if not self.diverged(losses, factor=max(1.0, self.p.guard_factor / 2)):
            self.take(step)

    def rollback(self, step: int, losses: list[float]) -> int:
        """Restore the snapshot; returns the step to continue from (losses truncated to it)."""
        self.rollbacks.append(step + 1)
        if len(self.rollbacks) > self.p.guard_max_rollbacks:
            raise DivergenceError(
                f"toy SD training diverged {len(self.rollbacks)} times (at steps {self.rollbacks}); lower TrainParams.lr "
                f"(now {self.p.lr}) or raise TrainParams.guard_max_rollbacks ({self.p.guard_max_rollbacks})")
        states, opt_state, ema = self.snapshot
        for m, sd in zip(self.modules, states):
            m.load_state_dict(sd)
        self.opt.load_state_dict(opt_state)
        for k, v in ema.items():
            self.ema[k].copy_(v)
        log.warning("toy SD: loss spiked at step %d (last %d mean %.4f); rolled back to step %d (rollback %d of "
                    "at most %d)", step + 1, self.p.guard_window, sum(losses[-self.p.guard_window:]) /
                    self.p.guard_window, self.snap_step, len(self.rollbacks), self.p.guard_max_rollbacks)
        del losses[self.snap_step:]
        return self.snap_step


def fit_unet(out: Path, images: torch.Tensor, az: torch.Tensor, labels: torch.Tensor, prompts: list[str],
             p: TrainParams, extra_info: dict | None = None, log_every: int = 10,
             save_extra=None) -> dict:
    """Train tokenizer + text encoder + UNet on `images` (N, C, H, W: pixels in [-1, 1] or scaled
    latents) labelled by prompt index and azimuth; save EMA weights every `checkpoint_every` steps.

    Why separate from `train`: the latent toy prior trains the same UNet on VAE latents.
    `save_extra(out)` runs after each save (e.g. to write vae/ and fix model_index.json)."""
    from transformers import CLIPTokenizer

    save_dtype(p.save_dtype)  # a bad name fails before minutes of training, not at the first save
    write_tokenizer(out, prompts, p.max_tokens)
    tok = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    torch.manual_seed(p.seed)
    unet, text = build_models(p, len(tok), tok.bos_token_id, tok.eos_token_id, channels=images.shape[1],
                              sample_size=images.shape[-1])
    ema = {k: v.detach().clone() for k, v in list(unet.state_dict().items()) + [
        ("text." + k, v) for k, v in text.state_dict().items()]}
    params = list(unet.parameters()) + list(text.parameters())
    log.info("toy SD: UNet %.2fM params, text encoder %.2fM", sum(x.numel() for x in unet.parameters()) / 1e6,
             sum(x.numel() for x in text.parameters()) / 1e6)
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=0.0)
    ac = alphas_cumprod()
    g = torch.Generator().manual_seed(p.seed)
    # all distinct training strings tokenised once
    strings = sorted({""} | {s for pr in prompts for s in (pr, pr + ", front view", pr + ", side view",
                                                           pr + ", back view")})
    ids_all = tok(strings, padding="max_length", max_length=p.max_tokens, truncation=True,
                  return_tensors="pt").input_ids
    row = {s: i for i, s in enumerate(strings)}
    losses: list[float] = []
    t_train = time.perf_counter()
    unet.train()
    text.train()
    guard = DivergenceGuard(p, [unet, text], opt, ema)
    step = -1
    while step + 1 < p.steps:
        step += 1
        idx = torch.randint(0, len(images), (p.batch_size,), generator=g)
        u = torch.rand(p.batch_size, generator=g)
        texts = [training_prompt(prompts[int(labels[i])], float(az[i]), float(uu), p) for i, uu in zip(idx, u)]
        ids = ids_all[[row[s] for s in texts]]
        t = torch.randint(0, T_TRAIN, (p.batch_size,), generator=g)
        noise = torch.randn(p.batch_size, *images.shape[1:], generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        x0 = images[idx]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = p.lr * min(1.0, (step + 1) / max(1, p.warmup))
        for grp in opt.param_groups:
            grp["lr"] = lr
        emb = text(ids)[0]
        pred = unet(xt, t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(p.ema_decay, (1 + step) / (10 + step))
            cur = dict(unet.state_dict())
            cur.update({"text." + k: v for k, v in text.state_dict().items()})
            for k, v in cur.items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    ema[k].copy_(v)
        losses.append(float(loss.detach()))
        if guard.diverged(losses):
            step = guard.rollback(step, losses) - 1  # the batch generator is not rewound: fresh batches
            continue
        if (step + 1) % p.guard_every == 0:
            guard.maybe_take(step + 1, losses)
        if (step + 1) % log_every == 0 or step == p.steps - 1:
            el = time.perf_counter() - t_train
            log.info("step %d/%d loss %.4f (avg50 %.4f) lr %.2e %.2f s/step", step + 1, p.steps, losses[-1],
                     sum(losses[-50:]) / len(losses[-50:]), lr, el / (step + 1))
        if (step + 1) % p.checkpoint_every == 0 or step == p.steps - 1:
            info = {"steps": step + 1, "seed": p.seed, "final_loss_avg100": sum(losses[-100:]) / len(losses[-100:]),
                    "rollbacks_at_steps": list(guard.rollbacks),
                    "train_seconds": round(time.perf_counter() - t_train, 1),
                    "seconds_per_step": round((time.perf_counter() - t_train) / (step + 1), 3),
                    "num_views": len(images), **(extra_info or {}),
                    "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items()},
                    "unet_params": sum(x.numel() for x in unet.parameters()),
                    "text_params": sum(x.numel() for x in text.parameters())}
            info["params"]["steps"] = step + 1  # the run this checkpoint is identical to
            _save(out, unet, text, ema, info, p.save_dtype)
            if save_extra is not None:
                save_extra(out)
    return info


SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def save_dtype(name: str) -> torch.dtype:
    if name not in SAVE_DTYPES:
        raise ValueError(f"save_dtype={name!r} is unknown; use one of {sorted(SAVE_DTYPES)}")
    return SAVE_DTYPES[name]


def _save(out: Path, unet, text, ema: dict, info: dict, dtype_name: str = "fp32") -> None:
    """EMA weights -> diffusers layout (safetensors) + train_info.json; the UNet stored in `dtype_name`
    (fp16 halves the shipped latent toy SD; the text encoder is tiny and stays fp32)."""
    import copy

    u, t = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    u.load_state_dict({k: v for k, v in ema.items() if not k.startswith("text.")})
    t.load_state_dict({k[5:]: v for k, v in ema.items() if k.startswith("text.")})
    u.to(save_dtype(dtype_name))
    u.save_pretrained(str(out / "unet"), safe_serialization=True)
    t.save_pretrained(str(out / "text_encoder"), safe_serialization=True)
    _write_scheduler_and_index(out)
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("toy SD step %d saved to %s: loss (avg of last 100) %.4f, %.0f s", info["steps"], out,
             info["final_loss_avg100"], info["train_seconds"])


def nearest_object(images: torch.Tensor, views: list) -> torch.Tensor:
    """Index (into `views`) of the object owning each image's nearest ground-truth view (pixel L2)."""
    x = images.reshape(images.shape[0], -1).double()
    best = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    idx = torch.zeros(x.shape[0], dtype=torch.long)
    for j, v in enumerate(views):
        d = torch.cdist(x, v.chw().reshape(len(v.images), -1).double()).min(dim=1).values
        better = d < best
        best = torch.where(better, d, best)
        idx[better] = j
    return idx


OUT_HELP = ("output directory (default: ./toy_sd_<recipe> under the working directory; use it with "
            "--set prior.model=DIR). Never the installed package unless --force-package")
FORCE_HELP = "allow --out inside the installed package (replaces the shipped toy SD weights)"


def resolve_out_dir(out: str | None, recipe: str, force_package: bool) -> Path | str:
    """Where `train-prior` writes: never into the installed package by default (that would
    silently replace the shipped prior every later run uses). Returns the folder, or an error."""
    root = Path(__file__).resolve().parents[3]  # the checkout / site-packages root
    target = Path(out).expanduser().resolve() if out else Path.cwd().resolve() / f"toy_sd_{recipe}"
    inside = [pkg for pkg in (root / n for n in ("stages", "pipeline", "kernels"))
              if target == pkg or pkg in target.parents]
    if inside and not force_package:
        return (f"--out {target} lies inside the installed package ({inside[0]}); training there "
                f"replaces the shipped toy SD. Choose another --out, or add --force-package to "
                f"replace it on purpose")
    return target

