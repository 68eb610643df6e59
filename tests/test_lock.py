"""The run lock under real concurrency (issue 26 item 7): a stale lock is taken over by exactly one
of many processes racing for it, and a heartbeat that finds its lock taken over stops the run.

No timing assumptions: the contenders are real processes released together by a barrier, and
each trial's verdict is "how many of them hold the lock once all have tried" (the holders keep it
until every contender has answered)."""

import json
import logging
import multiprocessing as mp
import os
import socket
import time

import pytest

from common import deadline, manifest
from common.lock import LOCK_NAME, LockHeld, RunLock
GUARD_NAME = "run.lock.guard"; LOST_LOCK = "lost the run lock"
from common.storage import open_storage

DEAD_PID = 2**22 + 7  # above Linux's largest pid_max: never a running process
CONTENDERS = 6
TRIALS = 36


def _stale_body(kind: str) -> str:
    if kind == "dead-pid":  # the owner process on this host is gone
        return json.dumps({"host": socket.gethostname(), "pid": DEAD_PID, "token": "dead",
                           "started_at": 0, "heartbeat_at": time.time()})
    if kind == "old-heartbeat":  # another host whose heartbeat stopped long ago
        return json.dumps({"host": "elsewhere", "pid": 1, "token": "old", "started_at": 0,
                           "heartbeat_at": 0})
    return "{not json"  # a damaged lock file


def _contender(roots: list, start, tried, results) -> None:
    """One process: for each trial, wait for everyone, try to acquire, report, wait until every
    contender has reported, then release what it holds."""
    for t, root in enumerate(roots):
        start.wait()
        lock = RunLock(open_storage(root), stale_after_s=900.0, heartbeat_s=3600.0)
        try:
            lock.acquire()
            results.put((t, os.getpid(), "held"))
        except LockHeld as e:
            results.put((t, os.getpid(), "refused: " + ("in use by another run" if "in use by "
                                                         "another run" in str(e) else str(e)[:300])))
            lock = None
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            results.put((t, os.getpid(), f"error: {type(e).__name__}: {e}"))
            lock = None
        tried.wait()
        if lock is not None:
            lock.release()


def test_stale_lock_takeover_has_one_winner_across_processes(tmp_path):
    kinds = ["dead-pid", "old-heartbeat", "damaged", "none"]
    roots = []
    for t in range(TRIALS):
        root = tmp_path / f"t{t:02d}"
        root.mkdir()
        kind = kinds[t % len(kinds)]
        if kind != "none":
            (root / LOCK_NAME).write_text(_stale_body(kind))
        roots.append(str(root))
    ctx = mp.get_context("spawn")
    start, tried, results = ctx.Barrier(CONTENDERS), ctx.Barrier(CONTENDERS), ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(roots, start, tried, results))
             for _ in range(CONTENDERS)]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=300) for _ in range(TRIALS * CONTENDERS)]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    errors = [g for g in got if g[2].startswith("error")]
    assert not errors, errors[:3]
    winners = {t: [pid for tt, pid, r in got if tt == t and r == "held"] for t in range(TRIALS)}
    many = {t: w for t, w in winners.items() if len(w) != 1}
    assert not many, f"trials without exactly one holder (trial: holders): {many}"
    refusals = [r for _, _, r in got if r.startswith("refused")]
    assert len(refusals) == TRIALS * (CONTENDERS - 1)
    assert all("in use by another run" in r for r in refusals), refusals[:3]
    for root in roots:  # every holder released; no guard file left behind
        assert not os.path.exists(os.path.join(root, LOCK_NAME))
        assert not os.path.exists(os.path.join(root, GUARD_NAME))


def test_heartbeat_that_finds_its_lock_taken_over_stops_the_run(tmp_path, caplog):
    st = open_storage(str(tmp_path))
    deadline.clear_stop()
    lock = RunLock(st, heartbeat_s=3600.0).acquire()
    try:
        assert lock.refresh() and not deadline.stop_requested()  # still ours: rewritten
        # another process judged it stale and took it over (e.g. after a long suspend)
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "other-host", "pid": 4242,
                                                      "token": "theirs", "started_at": 1,
                                                      "heartbeat_at": time.time()}))
        with caplog.at_level(logging.ERROR, logger="common.lock"):
            assert lock.refresh() is False
        why = deadline.stop_requested()
        assert why.startswith(LOST_LOCK) and "host other-host pid 4242" in why
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(lines) == 1 and "stopping this run" in lines[0] and "\n" not in lines[0]
        lock.release()
        # the new owner's lock is left alone
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "theirs"
    finally:
        deadline.clear_stop()
        lock.release()


def test_heartbeat_thread_stops_the_run_when_the_lock_is_deleted(tmp_path):
    """The same through the real heartbeat thread (a short period; waited for by its effect)."""
    st = open_storage(str(tmp_path))
    deadline.clear_stop()
    lock = RunLock(st, heartbeat_s=0.01).acquire()
    try:
        (tmp_path / LOCK_NAME).unlink()
        give_up = time.monotonic() + 120  # bounds a broken heartbeat only; the pass needs no wait
        while not deadline.stop_requested() and time.monotonic() < give_up:
            time.sleep(0.01)
        assert deadline.stop_requested().startswith(LOST_LOCK)
        assert "was deleted" in deadline.stop_requested() and not lock.held
    finally:
        deadline.clear_stop()
        lock.release()


def test_run_that_lost_its_lock_stops_without_writing_run_json(tmp_path, monkeypatch):
    """The run's reaction to the heartbeat's stop: no new asset, no compaction, run.json left to
    the new owner, one LockHeld line (exit 2)."""
    import fakes
    from common.config import load_config
    from pipeline.run import run_batch

    calls = []

    def generate(cfg, prompt, seed, asset_dir, progress=False):
        calls.append(prompt)
        with open(os.path.join(asset_dir, "asset.ply"), "w") as f:
            f.write("ply\n")
        # the heartbeat found the lock taken over while this asset ran
        owner = {"host": "other-host", "pid": 4242, "token": "theirs", "started_at": 1,
                 "heartbeat_at": time.time()}
        (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(owner))
        (tmp_path / "out" / "run.json").write_text('{"status": "running", "by": "theirs"}')
        deadline.request_stop(f"{LOST_LOCK} {tmp_path / 'out' / LOCK_NAME}: it now names host "
                              f"other-host pid 4242")
        return fakes.result(asset_dir)

    fakes.use_generate(monkeypatch, generate)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\na green cone\n")
    cfg = load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                   "pipeline.report=false", "metrics.fid=false"])
    try:
        with pytest.raises(LockHeld, match="lost the run lock .*this run stopped without compacting"):
            run_batch(str(prompts), cfg, str(tmp_path / "out"), progress=False)
    finally:
        deadline.clear_stop()
    assert len(calls) == 1  # no new asset started
    assert json.loads((tmp_path / "out" / "run.json").read_text())["by"] == "theirs"
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["token"] == "theirs"
    assert not (tmp_path / "out" / manifest.COMPACTED).exists()
