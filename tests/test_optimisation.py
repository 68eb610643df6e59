"""The optimisation object: snapshot / restore / retry give exactly the runs they promise."""

from __future__ import annotations

import torch

from stages.optimisation import Optimisation, noise_seed
from test_generate import FakePrior, tiny_cfg


def params_after(opt: Optimisation, its: range) -> dict[str, torch.Tensor]:
    for it in its:
        opt.step(it)
    return {k: v.detach().clone() for k, v in opt.gaussians.params().items()}


def test_restore_of_a_snapshot_replays_the_same_iterations_bit_for_bit():
    cfg = tiny_cfg("generate.method=sctd")         # densifies at 4 and 8: rows added and removed
    opt = Optimisation(cfg, "a red square", 2, FakePrior())
    opt.restore(opt.fresh_state())
    params_after(opt, range(1, 4))
    snap = opt.snapshot(3, elapsed_s=0.0)
    a = params_after(opt, range(4, 10))
    calls_a, hist_a = opt.unet_calls, len(opt.history)
    opt.restore(snap)
    assert opt.unet_calls == snap.unet_calls and len(opt.history) == 3
    b = params_after(opt, range(4, 10))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (opt.unet_calls, len(opt.history)) == (calls_a, hist_a)


def test_retry_rolls_back_with_the_noise_of_that_attempt():
    cfg = tiny_cfg("generate.method=sctd")
    opt = Optimisation(cfg, "a red square", 2, FakePrior())
    start = opt.fresh_state()
    opt.restore(start)
    first = params_after(opt, range(1, 4))
    eps0 = opt.eps_star.clone()
    opt.retry(start, attempt=1)
    assert opt.attempt == 1 and opt.noise_seed == noise_seed(2, 1) != start.noise_seed
    assert not torch.equal(opt.eps_star, eps0)        # SCTD's fixed noise is drawn anew
    assert opt.history == [] and opt.unet_calls == 0
    second = params_after(opt, range(1, 4))
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_plans_of_any_chunk_length_give_the_same_run(monkeypatch):
    # issue 20 item 7: cameras, backgrounds and flags are drawn ahead in chunks (one copy to the
    # device per chunk); chunk boundaries, and a snapshot taken inside a chunk, change nothing
    import stages.optimisation as O

    cfg = tiny_cfg("generate.method=sds", "prior.perp_neg=true")   # Perp-Neg weights travel in the plan
    whole = Optimisation(cfg, "a red square", 2, FakePrior())
    whole.restore(whole.fresh_state())
    a = params_after(whole, range(1, 11))
    monkeypatch.setattr(O, "PLAN_CHUNK", 3)
    opt = Optimisation(cfg, "a red square", 2, FakePrior())
    opt.restore(opt.fresh_state())
    params_after(opt, range(1, 6))                     # plans 1-3, 4-6: iteration 5 is mid-chunk
    snap = opt.snapshot(5, elapsed_s=0.0)
    opt.restore(snap)                                  # plans 6-8 from the state after iteration 5
    b = params_after(opt, range(6, 11))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_state_from_another_generator_device_is_refused_in_one_line():
    # the noise generator lives on the device now; a CUDA generator's state (16 bytes: seed and
    # offset) cannot enter a CPU one (5056 bytes), nor an old host state a CUDA one
    import dataclasses

    import pytest

    opt = Optimisation(tiny_cfg("generate.method=sds"), "a red square", 2, FakePrior())
    st = dataclasses.replace(opt.fresh_state(), gen_noise=torch.zeros(16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not those of cpu generators.*checkpoints/ folder aside"):
        opt.restore(st)


def _ema_sds(monkeypatch):
    """Register tests/plugins/ema_sds_method.py (a method with per-asset state) for one test."""
    import sys
    from pathlib import Path

    from common import plugins
    from stages.methods import METHODS

    snap = METHODS.snapshot()
    monkeypatch.setattr(plugins, "_loaded", {})
    for name in [n for n in sys.modules if n.startswith("sctd3d_plugin_")]:
        monkeypatch.delitem(sys.modules, name)
    plugins.load_plugins([str(Path(__file__).resolve().parent / "plugins" / "ema_sds_method.py")])
    return snap


def test_a_stateful_methods_snapshot_is_a_copy_that_restore_replays(monkeypatch):
    # the NaN guard rolls back to an in-memory snapshot: a method state updated in place (the EMA
    # buffer of tests/plugins/ema_sds_method.py) must not reach into it
    from stages.methods import METHODS

    snap_reg = _ema_sds(monkeypatch)
    try:
        opt = Optimisation(tiny_cfg("generate.method=ema_sds"), "a red square", 2, FakePrior())
        opt.restore(opt.fresh_state())
        assert float(opt.state.ema.abs().sum()) == 0          # created per asset, empty
        params_after(opt, range(1, 4))
        snap = opt.snapshot(3, elapsed_s=0.0)
        ema3 = snap.method_state["ema"].clone()
        assert float(ema3.abs().sum()) > 0 and torch.equal(ema3, opt.state.ema.cpu())
        a = params_after(opt, range(4, 9))
        assert torch.equal(snap.method_state["ema"], ema3)    # the live state moved on, the snapshot did not
        opt.restore(snap)
        b = params_after(opt, range(4, 9))
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        METHODS.restore(snap_reg)


def test_a_checkpoint_of_the_fixed_noise_alone_still_resumes(tmp_path):
    # checkpoints written before methods owned their state hold a top-level `eps_star`
    from safetensors.torch import load_file, save_file

    from stages.checkpoint import load_latest_checkpoint, save_checkpoint

    opt = Optimisation(tiny_cfg("generate.method=sctd"), "a red square", 2, FakePrior())
    st = opt.fresh_state()
    save_checkpoint(tmp_path, st, {"run": "x"})
    path = tmp_path / "ckpt_0000000.safetensors"
    flat = load_file(str(path))
    assert torch.equal(flat["method/eps_star"], st.eps_star)
    flat["eps_star"] = flat.pop("method/eps_star")          # the old layout
    save_file(flat, str(path))
    old = load_latest_checkpoint(tmp_path, {"run": "x"})
    assert old.method_state.keys() == {"eps_star"} and torch.equal(old.eps_star, st.eps_star)
    opt.restore(old)
    assert torch.equal(opt.eps_star, st.eps_star)
