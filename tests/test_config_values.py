"""Config values that used to pass validation and fail only at run time (issue 14, item 7):
each is refused while loading, by `sctd3d config` with exit 2 and one line naming the key."""

from __future__ import annotations

import contextlib
import io

import pytest

from pipeline.cli import main as cli_main
from common.config import ConfigError, apply_overrides, load_config

BAD = [
    ("generate.optim.position_lr_init=.nan", "generate.optim.position_lr_init", "finite"),
    ("generate.optim.color_lr_init=.inf", "generate.optim.color_lr_init", "finite"),
    ("generate.optim.scale_lr_final=-.inf", "generate.optim.scale_lr_final", "finite"),
    ("prior.guidance_scale=.nan", "prior.guidance_scale", "finite"),
    ("render.background=[1,1,x]", "render.background", "[r, g, b]"),
    ("render.background=[1,1,2]", "render.background", "in [0, 1]"),
    ("generate.save_ply_at=[abc]", "generate.save_ply_at", "integers >= 1"),
    ("generate.save_ply_at=[1.5]", "generate.save_ply_at", "integers >= 1"),
    ("prior.device=gpu", "prior.device", "cuda:N"),
    ("metrics.device=cuda0", "metrics.device", "cuda:N"),
    ("generate.cameras.radius_range=[.nan,5]", "generate.cameras.radius_range", "finite"),
    ("generate.cameras.polar_range_deg=[45,.inf]", "generate.cameras.polar_range_deg", "finite"),
    ("toy.camera_fovy_range=[.nan,.nan]", "toy.camera_fovy_range", "finite"),
    ("generate.cameras.fovy_range=[-1,0.5]", "generate.cameras.fovy_range", "low >= 0"),
    ("prior.image_size=30", "prior.image_size", "multiple of 8"),
    ("prior.image_size=4", "prior.image_size", "minimum 8"),
    (f"generate.seed={2**70}", "generate.seed", "64-bit"),
    (f"generate.seed={2**63}", "generate.seed", "64-bit"),
    ("report.thresholds={clip_l: .nan}", "report.thresholds.clip_l", "finite"),
    ("deviations=[1]", "deviations", "strings"),
]


@pytest.mark.parametrize("override,key,why", BAD, ids=[b[0] for b in BAD])
def test_run_time_failures_are_refused_at_load(override, key, why):
    with pytest.raises(ConfigError) as e:
        load_config("toy.yaml", [override])
    msg = str(e.value)
    assert key in msg and why in msg, msg


def test_sctd3d_config_exits_2_with_one_line_naming_the_key():
    for override, key, _ in BAD[:3] + BAD[8:9] + BAD[14:15] + BAD[16:17]:
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            with pytest.raises(SystemExit) as e:
                cli_main(["config", "--config", "toy.yaml", "--set", override])
        lines = err.getvalue().strip().splitlines()
        assert e.value.code == 2 and len(lines) == 1, (override, err.getvalue())
        assert lines[0].startswith("sctd3d config: error: ") and key in lines[0], lines
        assert out.getvalue() == ""


def test_yaml_file_values_and_row_overrides_are_checked_too(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("base: toy.yaml\nprior:\n  device: gpu\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: prior\.device: 'gpu' is not a device"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"row: generate\.optim\.opacity_lr: nan is not a finite"):
        apply_overrides(load_config("toy.yaml"), {"generate.optim.opacity_lr": float("nan")}, "row")


def test_good_values_still_load():
    c = load_config("toy.yaml", ["prior.device=cuda:1", "metrics.device=mps", "prior.image_size=24",
                                 f"generate.seed={2**63 - 1}", "render.background=[0, 0.5, 1]",
                                 "generate.save_ply_at=[1, 600]"])
    assert (c.prior.device, c.prior.image_size, c.generate.seed) == ("cuda:1", 24, 2**63 - 1)
    assert c.render.background == [0, 0.5, 1] and c.generate.save_ply_at == [1, 600]


def test_seed_at_the_bound_is_accepted_by_every_txt_row(tmp_path):
    """A config seed that passes validation is one every prompt row accepts (no row rejected)."""
    from pipeline.inputs import read_prompts

    cfg = load_config("toy.yaml", [f"generate.seed={2**63 - 1}"])
    f = tmp_path / "p.txt"
    f.write_text("a red cube\na blue sphere\n")
    batch = read_prompts(str(f), cfg)
    assert len(batch.requests) == 2 and not batch.rejected
