"""The toy SD training's divergence guard (TrainParams.guard_*): a loss spike is rolled back and
training continues; a run without spikes is bit-identical to one with the guard switched off;
repeated divergence stops with an error naming the steps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from stages.toyworld.prior_training import common
from stages.toyworld.prior_training.common import DivergenceError, TrainParams
from stages.toyworld.prior_training.pixel import train

TINY = dict(batch_size=4, num_views=2, resolution=16, block_out_channels=(8, 16), text_hidden=16, text_layers=1,
            max_tokens=24, warmup=1, checkpoint_every=1000, guard_every=5, guard_window=3, guard_history=10)


class SpikingMSE:
    """Test double of F.mse_loss: the real loss, times `factor` on the calls numbered in `spike_calls`
    (a stand-in for the blow-up seen at step ~4955 of a 5000-step run)."""

    def __init__(self, spike_calls: set[int], factor: float = 1e3) -> None:
        self.real, self.calls, self.spike_calls, self.factor = torch.nn.functional.mse_loss, 0, spike_calls, factor

    def __call__(self, pred, target):
        self.calls += 1
        loss = self.real(pred, target)
        return loss * self.factor if self.calls in self.spike_calls else loss


def _unet(path):
    return load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))


def test_no_spike_same_weights_as_without_guard(tmp_path):
    train(tmp_path / "a", steps=30, seed=1, params=TrainParams(**TINY), cache_dir=str(tmp_path / "c"))
    train(tmp_path / "b", steps=30, seed=1, params=TrainParams(**{**TINY, "guard_factor": 1e12}),
          cache_dir=str(tmp_path / "c"))
    wa, wb = _unet(tmp_path / "a"), _unet(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_spike_is_rolled_back_and_training_finishes(tmp_path, monkeypatch):
    spiking = SpikingMSE(spike_calls={20, 21})
    monkeypatch.setattr(common.F, "mse_loss", spiking)
    info = train(tmp_path / "s", steps=30, seed=1, params=TrainParams(**TINY), cache_dir=str(tmp_path / "c"))
    assert info["steps"] == 30 and info["rollbacks_at_steps"] and info["rollbacks_at_steps"][0] in (20, 21, 22)
    assert spiking.calls > 30  # the rolled-back steps were trained again
    assert info["final_loss_avg100"] < 10  # the spiked losses were dropped with the rollback
    assert all(torch.isfinite(v.float()).all() for v in _unet(tmp_path / "s").values())


def test_non_finite_loss_is_rolled_back(tmp_path, monkeypatch):
    monkeypatch.setattr(common.F, "mse_loss", SpikingMSE(spike_calls={3}, factor=float("nan")))
    info = train(tmp_path / "n", steps=8, seed=1, params=TrainParams(**TINY), cache_dir=str(tmp_path / "c"))
    assert info["rollbacks_at_steps"] == [3]
    assert all(torch.isfinite(v.float()).all() for v in _unet(tmp_path / "n").values())


def test_persistent_divergence_stops_with_a_named_error(tmp_path, monkeypatch):
    monkeypatch.setattr(common.F, "mse_loss", SpikingMSE(spike_calls=set(range(15, 10_000))))
    with pytest.raises(DivergenceError, match=r"diverged 3 times \(at steps \[.*\]\); lower TrainParams.lr"):
        train(tmp_path / "d", steps=40, seed=1, params=TrainParams(**{**TINY, "guard_max_rollbacks": 2}),
              cache_dir=str(tmp_path / "c"))
