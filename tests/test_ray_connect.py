"""`--executor ray --address` to a cluster that is not there fails within a bounded time with one
line naming the address and exit 2 (it used to hang, warning every 30 s); run.json says failed and
the lock is released. No Ray instance may be running in this process for these tests."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parent.parent


def _unused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: a connection is refused
    return port


def _prompts(tmp_path) -> str:
    p = tmp_path / "p.txt"
    p.write_text("a red cube\n")
    return str(p)


def test_refused_address_fails_fast_with_one_line(tmp_path, capsys, monkeypatch):
    import ray

    import pipeline.executors.ray as ray_executor
    from pipeline.cli import main

    if ray.is_initialized():  # pragma: no cover - another module left Ray up in this process
        ray.shutdown()
    probes = []
    monkeypatch.setattr(ray_executor, "_probe", lambda *a: probes.append(a))
    addr = f"127.0.0.1:{_unused_port()}"
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["run", _prompts(tmp_path), "--out", str(out), "--executor", "ray", "--address", addr,
              "--config", "toy.yaml", "--set", "pipeline.render=false"])
    assert e.value.code == 2 and probes == []  # refused: no connect attempt is even started
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and addr in err[0] and "sctd3d run: error:" in err[0], err
    assert "pipeline.connect_timeout_s" in err[0]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and addr in info["error"]
    assert not (out / "run.lock").exists() and not ray.is_initialized()


# Runs the CLI as a user does, then reports what the connect attempt left behind in this process at
# exit: a live connect thread (its C++ GCS client keeps retrying and, during the interpreter's exit,
# runs into the C++ static destructors: std::bad_alloc -> abort, exit -6) or child processes.
_CLI_THEN_LEFTOVERS = """
import sys, threading
import psutil
from pipeline.cli import main
try:
    main()
finally:
    threads = sorted(t.name for t in threading.enumerate() if t.name == "ray-connect")
    kids = [p.pid for p in psutil.Process().children(recursive=True)]
    print(f"LEFTOVERS threads={threads} children={kids}", file=sys.stderr, flush=True)
"""


def test_silent_address_gives_up_after_connect_timeout(tmp_path):
    """Something listens but is no Ray cluster (or a firewall swallows the handshake): ray.init
    would retry forever; the run gives up after pipeline.connect_timeout_s with exit 2, and the
    attempt leaves nothing running in the process (issue 26: it used to abort at exit, -6)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    addr = f"127.0.0.1:{srv.getsockname()[1]}"
    try:
        res = subprocess.run(
            [sys.executable, "-c", _CLI_THEN_LEFTOVERS, "run", _prompts(tmp_path),
             "--out", str(tmp_path / "out"), "--executor", "ray", "--address", addr,
             "--config", "toy.yaml", "--set", "pipeline.connect_timeout_s=3"],
            cwd=ROOT, capture_output=True, text=True, timeout=240)  # bounded: it used to hang
    finally:
        srv.close()
    assert "LEFTOVERS threads=[] children=[]" in res.stderr, res.stderr[-2000:]
    assert res.returncode == 2, res.stderr[-2000:]
    mine = [ln for ln in res.stderr.splitlines() if ln.startswith("sctd3d run: error:")]
    assert len(mine) == 1 and addr in mine[0] and "within 3 s" in mine[0], res.stderr[-2000:]
    assert "bad_alloc" not in res.stderr and "terminate called" not in res.stderr
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["status"] == "failed" and "within 3 s" in info["error"]


def square(x):
    return x * x


def test_reachable_address_connects_and_runs(request):
    """The bounded connect still joins a real cluster (ray.init runs in a helper thread)."""
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.executors.ray import RayExecutor

    if ray.is_initialized():  # pragma: no cover
        ray.shutdown()
    ray.cloudpickle.register_pickle_by_value(request.module)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        ex = RayExecutor(address=cluster.address, num_workers=1, connect_timeout_s=60)
        assert [o.value for o in ex.map([3], square)] == [9]
        assert ray.is_initialized()  # connected to the cluster, not a fresh local instance
        assert ray.cluster_resources().get("CPU") == 1.0
    finally:
        ray.shutdown()
        cluster.shutdown()
