"""Every field of every kernel parameter dataclass is fed from the config (stages.kernel_params).

Each leaf of the `generate` and `prior` sections is changed one at a time; a kernel field is fed
when some config change (or, for the trainer's split seed, the asset seed) changes it. A field no
config key reaches would silently keep its kernel default whatever the user configures.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

from kernels.cameras import CameraSamplerParams
from kernels.ddim import TimestepParams
from kernels.distill import ISMParams, SCTDParams, SDSParams, Schedule
from kernels.trainer import TrainerParams
from common.config import load_config
from stages import kernel_params as kp
from stages.methods import get_method

SEED = 3
BUILDERS = {  # kernel dataclass -> how the loop builds it from (config, asset seed)
    TrainerParams: lambda cfg, seed: kp.trainer_params(cfg, seed),
    CameraSamplerParams: lambda cfg, seed: kp.camera_params(cfg),
    SCTDParams: lambda cfg, seed: get_method("sctd").params(cfg),   # the methods' own modules
    SDSParams: lambda cfg, seed: get_method("sds").params(cfg),
    ISMParams: lambda cfg, seed: get_method("ism").params(cfg),
    TimestepParams: lambda cfg, seed: kp.timestep_params(cfg),
    Schedule: lambda cfg, seed: kp.schedule(cfg),
}


def config_leaves(section, path):
    for f in dataclasses.fields(section):
        v = getattr(section, f.name)
        if dataclasses.is_dataclass(v):
            yield from config_leaves(v, f"{path}.{f.name}")
        else:
            yield f"{path}.{f.name}", section, f


def changed(value, f):
    """A different valid-looking value of the same type."""
    choices = f.metadata.get("choices")
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 + 0.125 if value < 1 else value + 0.5
    if isinstance(value, list) and len(value) == 2:
        return [value[0] - 0.01, value[1] + 0.01]
    return None                                    # strings without choices, lists of iterations


def build(cfg, seed):
    return {cls: dataclasses.asdict(fn(cfg, seed)) for cls, fn in BUILDERS.items()}


def test_every_kernel_field_is_fed_from_the_config():
    base_cfg = load_config("base.yaml")
    base = build(base_cfg, SEED)
    fed: dict[tuple[str, str], list[str]] = {(cls.__name__, f.name): [] for cls in BUILDERS
                                              for f in dataclasses.fields(cls)}
    for section in ("generate", "prior"):
        for path, _, f in list(config_leaves(getattr(base_cfg, section), section)):
            cfg = copy.deepcopy(base_cfg)
            node = cfg
            for part in path.split(".")[:-1]:
                node = getattr(node, part)
            new = changed(getattr(node, f.name), f)
            if new is None:
                continue
            setattr(node, f.name, new)
            try:
                got = build(cfg, SEED)
            except ValueError as e:
                pytest.fail(f"{path}={new!r}: building the kernel parameters failed: {e}")
            for cls in BUILDERS:
                for name, v in got[cls].items():
                    if v != base[cls][name]:
                        fed[(cls.__name__, name)].append(path)
    for cls in BUILDERS:                            # the asset seed feeds the trainer's split noise
        for name, v in build(base_cfg, SEED + 1)[cls].items():
            if v != base[cls][name]:
                fed[(cls.__name__, name)].append("<asset seed>")
    missing = sorted(f"{c}.{n}" for (c, n), paths in fed.items() if not paths)
    assert not missing, f"kernel fields no config key feeds (they keep the kernel default): {missing}"
    # spot checks of the wiring itself
    assert "generate.optim.adam_beta2" in fed[("TrainerParams", "adam_betas")]
    assert fed[("TrainerParams", "seed")] == ["<asset seed>"]
    assert "prior.guidance_scale" in fed[("SCTDParams", "guidance_scale")]


def test_config_defaults_are_the_kernel_defaults():
    # the config carries the method's values; the kernels' defaults are the same values, so a
    # kernel used directly (tests, benchmarks) behaves like a default run
    cfg = load_config("base.yaml")
    for cls, fn in BUILDERS.items():
        if cls is Schedule:
            continue
        got, default = dataclasses.asdict(fn(cfg, 0)), dataclasses.asdict(cls())
        diff = {k: (got[k], default[k]) for k in got if got[k] != default[k] and k != "max_steps"}
        assert not diff, f"{cls.__name__}: config default vs kernel default {diff}"
