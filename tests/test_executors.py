"""Executors: the local and Ray executors pass the same contract; Ray adds the dynamic queue,
retries on worker death with a bounded attempt count, and the per-asset timeout."""

import os
import time

import pytest

import fakes
from pipeline.executors import Outcome, make_executor


def square(x):
    if x == 3:
        raise ValueError("three is bad")
    return {"y": x * x}


WAIT_BOUND_S = 300  # bounds a broken executor only: a passing run never waits for it


def slow_until_released(item):
    """("slow", release_file): blocks until the driver has created release_file (after it has
    received every fast result); ("fast", i): returns at once. With a dynamic queue the free worker
    takes every fast item while the slow one blocks, so the driver receives all fast results first
    and then releases the slow one: the order is decided by events, not by the clock. A static
    split would queue fast items behind the slow one: nothing releases it, and after WAIT_BOUND_S
    it returns "never released" (the test then fails on the order and that value)."""
    kind, arg = item
    if kind == "fast":
        return item
    give_up = time.monotonic() + WAIT_BOUND_S
    while not os.path.exists(arg):
        if time.monotonic() > give_up:
            return ("slow", "never released")
        time.sleep(0.01)
    return item


def blocks_until(item):
    """(release_file, value): blocks until release_file exists (bounded), returns value."""
    release, value = item
    give_up = time.monotonic() + WAIT_BOUND_S
    while not os.path.exists(release) and time.monotonic() < give_up:
        time.sleep(0.01)
    return value


def die_always(x):
    os._exit(1)


def die_once(item):
    marker, value = item
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return value




@pytest.fixture(params=["local", "ray"])
def executor(request):
    if request.param == "ray":
        request.getfixturevalue("ray_local")
        return make_executor("ray", num_workers=2, max_attempts=2, backoff_s=0.05)
    return make_executor("local", max_attempts=2)


def test_contract_results_and_errors(executor):
    outs = list(executor.map(range(6), square))
    assert all(isinstance(o, Outcome) for o in outs)
    assert sorted(o.item for o in outs) == list(range(6))
    by = {o.item: o for o in outs}
    assert [by[i].value for i in (0, 1, 2, 4, 5)] == [{"y": 0}, {"y": 1}, {"y": 4}, {"y": 16}, {"y": 25}]
    assert not by[3].ok and by[3].error == "ValueError: three is bad" and by[3].attempts == 1
    assert all(o.ok and o.attempts == 1 and o.worker for i, o in by.items() if i != 3)
    assert list(executor.map([], square)) == []
    assert executor.running() == 0


def test_local_retry_exceptions_is_opt_in():
    seen = []

    def flaky(x):
        seen.append(x)
        if len(seen) < 3:
            raise OSError("transient")
        return x

    ex = make_executor("local", max_attempts=3, backoff_s=0.0, retry_exceptions=True)
    [o] = list(ex.map([7], flaky))
    assert o.ok and o.attempts == 3 and seen == [7, 7, 7]
    with pytest.raises(ValueError, match="max_attempts"):
        make_executor("local", max_attempts=0)
    with pytest.raises(ValueError, match="not one of"):
        make_executor("dask")


def test_ray_dynamic_queue_retries_and_timeout(tmp_path, ray_local):
    from pipeline.executors.ray import RayExecutor

    # a slow item must not hold back the others: with 2 workers, all fast items finish first.
    # Event-based: the slow item is released by the driver only once it holds every fast result
    ex = RayExecutor(num_workers=2, max_attempts=1)
    release = tmp_path / "release"
    items = [("slow", str(release))] + [("fast", i) for i in range(5)]
    outs = []
    for o in ex.map(items, slow_until_released):
        outs.append(o)
        if sum(x.item[0] == "fast" for x in outs) == 5:
            release.touch()
    assert [o.item[0] for o in outs] == ["fast"] * 5 + ["slow"] and all(o.ok for o in outs)
    assert outs[-1].value == ("slow", str(release))  # released by the driver, not by the bound

    # worker death: retried (bounded), then recorded
    ex = RayExecutor(num_workers=2, max_attempts=3, backoff_s=0.05)
    outs = {str(o.item): o for o in ex.map([(str(tmp_path / "m1"), 1), (str(tmp_path / "m2"), 2)],
                                           die_once)}
    assert all(o.ok and o.attempts == 2 for o in outs.values())
    ex = RayExecutor(num_workers=1, max_attempts=2, backoff_s=0.05)
    [o] = list(ex.map(["x"], die_always))
    assert not o.ok and o.attempts == 2
    assert o.error.startswith("gave up after 2 attempts; last: worker died")
    assert ex.restarts >= 2

    # per-asset timeout kills the worker and records the reason; the next item still runs. The
    # first item never finishes by itself (nothing releases it), so only the timeout can end it
    ex = RayExecutor(num_workers=1, max_attempts=3, timeout_s=3.0)
    never = str(tmp_path / "never-created")
    outs = {o.item[1]: o for o in ex.map([(never, "stuck"), (str(tmp_path), "quick")], blocks_until)}
    assert not outs["stuck"].ok and "timeout: exceeded 3 s" in outs["stuck"].error
    assert outs["stuck"].attempts == 1 and ex.restarts >= 1  # not retried; its worker was replaced
    assert outs["stuck"].wall_s < WAIT_BOUND_S  # ended by the timeout, not by the item's own bound
    assert outs["quick"].ok and outs["quick"].value == "quick"


def test_local_per_asset_timeout_is_cooperative_and_not_retried():
    from common import deadline

    def spins(limit_s):
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:  # a long stage polling between iterations
            deadline.check("spin")
            time.sleep(0.01)
        return limit_s

    ex = make_executor("local", max_attempts=3, backoff_s=0.0, retry_exceptions=True, timeout_s=1.0)
    by = {o.item: o for o in ex.map([0.05, 30.0], spins)}
    assert by[0.05].ok and by[0.05].value == 0.05
    slow = by[30.0]
    assert not slow.ok and slow.attempts == 1 and slow.wall_s < 15.0
    assert slow.error.startswith("AssetTimeout: timeout: exceeded 1 s per-asset limit (pipeline.timeout_s)")
    deadline.check("outside any asset")  # no limit outside the executor's call
    assert list(make_executor("local", timeout_s=0.0).map([0.05], spins))[0].ok
    with pytest.raises(ValueError, match="timeout_s"):
        make_executor("local", timeout_s=-1)


def test_ray_worker_start_deadline_and_no_gpu_cluster(ray_local):
    """A worker that can never start (it asks for a GPU the cluster does not have) stops the map
    after pipeline.worker_start_timeout_s with one line naming the resource request, instead of
    waiting forever; without num_workers a GPU-less cluster is a clean ExecutorError."""
    from pipeline.executors import ExecutorError
    from pipeline.executors.ray import RayExecutor

    ex = RayExecutor(num_workers=1, gpus_per_worker=1, worker_start_timeout_s=2)
    t0 = time.monotonic()
    with pytest.raises(ExecutorError) as e:
        list(ex.map([1, 2], square))
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert "\n" not in msg and '{"CPU": 1.0, "GPU": 1.0}' in msg
    assert "pipeline.worker_start_timeout_s" in msg and '"CPU": 2.0' in msg
    with pytest.raises(ExecutorError, match=r"no GPUs.*--num-workers"):
        list(RayExecutor(gpus_per_worker=1).map([1], square))
    # the pending actor was released: the cluster still runs work
    assert [o.value for o in RayExecutor(num_workers=1).map([2], square)] == [{"y": 4}]


def _run_cfg(*extra):
    from common.config import load_config

    return load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                    "pipeline.report=false", "metrics.fid=false", *extra])


def fake_generate(cfg, prompt, seed, asset_dir, progress=False):
    with open(os.path.join(asset_dir, "asset.ply"), "w") as f:
        f.write("ply\n")
    return fakes.result(asset_dir)


def test_a_fake_generator_reaches_ray_workers_and_keeps_their_device_check(tmp_path, ray_local):
    """The generation seam (pipeline.workers.GENERATOR) reaches each Ray worker through the run's
    worker start-up (pipeline.workers.start_worker), which still checks the prior's device first:
    a test double never replaces the check (it used to, as the executor's `startup` option)."""
    import torch

    from pipeline.executors import ExecutorError

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (prior.device=cuda must be refused)")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    s = fakes.run_batch(fake_generate, str(prompts), _run_cfg("pipeline.gpus_per_worker=0"),
                        str(tmp_path / "ok"), executor="ray", num_workers=1, progress=False)
    assert s.done == 1 and list((tmp_path / "ok").glob("assets/*/*/asset.ply"))
    with pytest.raises(ExecutorError, match="prior.device"):
        fakes.run_batch(fake_generate, str(prompts), _run_cfg("pipeline.gpus_per_worker=0", "prior.device=cuda",
                                                              "pipeline.worker_start_timeout_s=60"),
                        str(tmp_path / "cuda"), executor="ray", num_workers=1, progress=False)
    assert not list((tmp_path / "cuda").glob("assets/*/*/asset.ply"))


def test_run_with_no_feasible_worker_fails_and_says_so(tmp_path, ray_local):
    """run_batch on a cluster that cannot start a worker: stops after the deadline, run.json says
    failed (with the reason), the lock is released, and the fixed re-run goes through."""
    import json

    from pipeline.executors import ExecutorError

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "out"
    with pytest.raises(ExecutorError, match=r'"GPU": 1\.0'):
        fakes.run_batch(fake_generate, str(prompts), _run_cfg("pipeline.gpus_per_worker=1",
                                         "pipeline.worker_start_timeout_s=2"),
                  str(out), executor="ray", num_workers=1, progress=False)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "worker_start_timeout_s" in info["error"]
    assert not (out / "run.lock").exists()
    from stages.report.html import _summary_section
    from stages.report import load_run

    prompts.write_text("a red cube\na blue sphere\n")
    s = fakes.run_batch(fake_generate, str(prompts), _run_cfg("pipeline.gpus_per_worker=0"), str(out), executor="ray",
                  num_workers=1, progress=False)
    assert s.done == 2
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["previous_stop"]["status"] == "failed"
    assert "worker_start_timeout_s" in info["previous_stop"]["error"]
    # a run whose run.json says failed shows it at the top of its report's summary
    (out / "run.json").write_text(json.dumps({**info, "status": "failed", "error": "ExecutorError: boom"}))
    run = load_run(str(out))
    assert run.summary()["stopped"] == {"status": "failed", "error": "ExecutorError: boom"}
    assert "stopped: run.json status <b>failed</b>: ExecutorError: boom" in _summary_section(run, None)


def test_ray_prior_device_check_runs_in_the_worker(tmp_path, ray_local):
    """An SD config on workers without CUDA: the check runs in each actor as it starts (the driver
    never checks: a head node has no GPU) and stops the run with the worker's one-line reason."""
    import json

    from common.config import load_config
    from pipeline.executors import ExecutorError
    from pipeline.run import run_batch

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    cfg = load_config("sd21.yaml", ["init.method=ball", "prior.model=/nonexistent/sd",
                                    "pipeline.gpus_per_worker=0", "pipeline.render=false",
                                    "pipeline.score=false", "metrics.fid=false"])
    with pytest.raises(ExecutorError) as e:
        run_batch(str(prompts), cfg, str(tmp_path / "out"), executor="ray", num_workers=1,
                  progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "start-up check: worker " in msg and "DeviceError" in msg
    assert "prior.allow_cpu" in msg and "CUDA" in msg
    worker_pid = int(msg.split("start-up check: worker ")[1].split(":")[1])
    assert worker_pid != os.getpid()
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "out" / "assets").exists()
