"""No silent CPU fallback for a real prior: prior.device=auto with stable_diffusion and no usable
CUDA is one error line (torch's CUDA build, the driver found, the config keys) before the first
asset, unless prior.allow_cpu says otherwise; the toy priors keep running on the CPU."""

import json
import os
import stat

import pytest
import torch

from pipeline.cli import main
from common.config import PriorConfig, load_config
from stages.priors import device as devmod
from stages.priors.device import DeviceError
from stages.priors.registry import require_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def _fake_nvidia_smi(tmp_path, monkeypatch, body: str):
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")


def test_auto_refuses_cpu_for_stable_diffusion(no_cuda, tmp_path, monkeypatch):
    monkeypatch.setattr(devmod.shutil, "which", lambda name: None)
    with pytest.raises(DeviceError) as e:
        require_device(PriorConfig(name="stable_diffusion", device="auto"))
    msg = str(e.value)
    assert "\n" not in msg and "CUDA 13.0" in msg and "no NVIDIA driver" in msg
    assert "prior.allow_cpu=true" in msg and "prior.device" in msg

    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    _fake_nvidia_smi(tmp_path, monkeypatch, 'echo "535.104.05"')  # a driver too old for CUDA 13
    with pytest.raises(DeviceError, match=r"CUDA 13\.0, NVIDIA driver 535\.104\.05"):
        require_device(PriorConfig(name="stable_diffusion"))
    _fake_nvidia_smi(tmp_path, monkeypatch, 'echo "No devices were found"; exit 6')
    with pytest.raises(DeviceError, match=r"no GPU \(nvidia-smi: No devices were found\)"):
        require_device(PriorConfig(name="stable_diffusion"))


def test_explicit_choices_and_toy_priors(no_cuda):
    assert require_device(PriorConfig(name="stable_diffusion", allow_cpu=True)).type == "cpu"
    assert require_device(PriorConfig(name="stable_diffusion", device="cpu")).type == "cpu"
    assert require_device(PriorConfig(name="stable_diffusion"), "cpu").type == "cpu"
    for name in ("toy_sd", "toy_exact"):
        assert require_device(PriorConfig(name=name)).type == "cpu"
    with pytest.raises(DeviceError, match=r"prior\.device=cuda:1 but no CUDA GPU.*prior\.device=cpu"):
        require_device(PriorConfig(name="toy_sd", device="cuda:1"))
    assert load_config("sd21.yaml", ["prior.allow_cpu=true"]).prior.allow_cpu is True
    assert load_config("sd21.yaml").prior.allow_cpu is False


def test_load_prior_refuses_too(no_cuda):
    from stages.priors.registry import load_prior

    with pytest.raises(DeviceError):
        load_prior(PriorConfig(name="stable_diffusion", model="/nonexistent"))


def test_local_run_fails_before_the_first_asset(no_cuda, tmp_path, capsys):
    """sctd3d run with an SD config on a machine without CUDA: exit 2, one line, no asset started,
    run.json says failed with the reason, the lock is released."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["run", str(prompts), "--out", str(out), "--config", "sd21.yaml",
              "--set", "init.method=ball", "--set", "prior.model=/nonexistent/sd"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA 13.0" in err[0] and "prior.allow_cpu" in err[0], err
    assert not (out / "assets").exists()
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "DeviceError" in info["error"]
    assert not (out / "run.lock").exists()


def test_generate_command_refuses_in_one_line(no_cuda, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "a red cube", "--out", str(tmp_path / "a"), "--config", "sd21.yaml",
              "--set", "init.method=ball", "--set", "prior.model=/nonexistent/sd", "--quiet"])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("sctd3d generate: error: prior 'stable_diffusion' needs a CUDA GPU")
    assert not (tmp_path / "a" / "asset.ply").exists()
