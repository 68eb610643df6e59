"""Chaos: a local multi-node Ray cluster, 24 prompts, Ray worker processes SIGKILLed at random
moments by a seeded, bounded killer thread. Afterwards every asset is in the compacted manifest
exactly once with status `done` (after one re-run if a kill budget was exhausted), no temp file
is left under the output root, killed assets count their attempts and resumed from the checkpoint
that existed when they were killed.

Generation is a test double (`FakeCheckpointedGenerate`) that keeps the real stage's checkpoint
protocol (safetensors tensors, then a JSON commit marker, both via *.tmp + rename; resume from the
newest committed marker) without importing torch, so a replacement worker starts in ~2 s.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fakes
from common import manifest
from common.config import load_config
from pipeline.inputs import read_prompts
from common.storage import open_storage

ray = pytest.importorskip("ray")

N_PROMPTS = 24
ITERATIONS, EVERY, STEP_S, TMP_WINDOW_S = 12, 3, 0.04, 0.04
COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
SHAPES = ["cube", "sphere", "cone", "torus"]
PROMPTS = [f"a {c} {s}" for c in COLOURS for s in SHAPES][:N_PROMPTS]


class FakeCheckpointedGenerate:
    """Test double for stages.generate.generate with its checkpoint protocol and resume.

    Per attempt it leaves `start-<asset>-<pid>-<rand>` in `log_dir` and, while running,
    `running-<asset>-<pid>` (removed on success): a killed attempt leaves its running file."""

    def __init__(self, log_dir: str):
        self.log_dir = str(log_dir)

    @staticmethod
    def latest_checkpoint(ck: Path) -> int:
        its = [int(p.stem.split("_")[1]) for p in ck.glob("ckpt_*.json")]
        return max(its, default=0)

    def __call__(self, cfg, prompt, seed, asset_dir, progress=False):
        from safetensors.numpy import load_file, save_file
        import numpy as np

        d, log_dir, pid = Path(asset_dir), Path(self.log_dir), os.getpid()
        ck = d / "checkpoints"
        ck.mkdir(parents=True, exist_ok=True)
        (log_dir / f"start-{d.name}-{pid}-{uuid.uuid4().hex[:6]}").write_text(str(d))
        running = log_dir / f"running-{d.name}-{pid}"
        running.write_text(str(d))
        resumed = self.latest_checkpoint(ck)
        state = np.zeros(16, dtype=np.float32)
        if resumed:
            state = load_file(str(ck / f"ckpt_{resumed:07d}.safetensors"))["state"]
            if not np.all(state == resumed):  # the marker must never precede its tensors
                raise RuntimeError(f"checkpoint {resumed} of {d} holds iteration {state[0]}")
        for it in range(resumed + 1, ITERATIONS + 1):
            time.sleep(STEP_S)
            state = state + 1
            if it % EVERY == 0:
                stem = ck / f"ckpt_{it:07d}"
                save_file({"state": state}, f"{stem}.safetensors.tmp")
                time.sleep(TMP_WINDOW_S)  # widen the window in which a kill leaves a temp file
                os.replace(f"{stem}.safetensors.tmp", f"{stem}.safetensors")
                Path(f"{stem}.json.tmp").write_text(json.dumps({"iteration": it}))
                os.replace(f"{stem}.json.tmp", f"{stem}.json")
                for old in sorted(ck.glob("ckpt_*.json"))[:-2]:
                    old.unlink()
                    old.with_suffix(".safetensors").unlink(missing_ok=True)
        (d / "asset.ply.tmp").write_bytes(b"ply\n" + prompt.encode())
        os.replace(d / "asset.ply.tmp", d / "asset.ply")
        (d / "meta.json").write_text(json.dumps({"prompt": prompt, "resumed_from": resumed}))
        running.unlink()
        return fakes.result(d, num_gaussians=int(state[0]), resumed_from=resumed)


def _is_ray_worker(pid: int) -> bool:
    try:
        return b"ray::" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class ChaosKiller(threading.Thread):
    """Seeded, bounded: every 0.15-0.6 s SIGKILL one Ray worker that is running an asset of ours
    (never the same asset twice, at most `max_kills`). Records (asset, pid, checkpoint seen)."""

    def __init__(self, log_dir: Path, seed: int, max_kills: int):
        super().__init__(daemon=True, name="chaos-killer")
        self.log_dir, self.rng, self.max_kills = log_dir, random.Random(seed), max_kills
        self.stop = threading.Event()
        self.kills: list[tuple[str, int, int]] = []

    def run(self) -> None:
        while len(self.kills) < self.max_kills and not self.stop.wait(self.rng.uniform(0.15, 0.6)):
            done = {a for a, _, _ in self.kills}
            cands = []
            for f in sorted(self.log_dir.glob("running-*")):
                _, asset, pid = f.name.split("-")
                if asset not in done and _is_ray_worker(int(pid)):
                    cands.append((asset, int(pid), Path(f.read_text()) / "checkpoints"))
            if not cands:
                continue
            asset, pid, ck = self.rng.choice(cands)
            seen = FakeCheckpointedGenerate.latest_checkpoint(ck)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append((asset, pid, seen))


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_random_worker_kills_lose_nothing(tmp_path, ray_cluster):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    cfg = load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                   "pipeline.report=false", "metrics.fid=false",
                                   "pipeline.backoff_s=0.05", "pipeline.max_attempts=3",
                                   "pipeline.cpus_per_worker=1"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out, log_dir = tmp_path / "out", tmp_path / "log"
    log_dir.mkdir()
    fake = FakeCheckpointedGenerate(str(log_dir))

    killer = ChaosKiller(log_dir, seed=20261125, max_kills=5)
    killer.start()
    try:
        s = fakes.run_batch(fake, str(prompts), cfg, str(out), executor="ray", address=ray_cluster.address,
                      num_workers=2, progress=False)
    finally:
        killer.stop.set()
        killer.join()
    if s.failed:  # a kill landed on an asset's last attempt: the re-run finishes the job
        s2 = fakes.run_batch(fake, str(prompts), cfg, str(out), executor="ray", address=ray_cluster.address,
                       num_workers=2, progress=False)
        assert s2.failed == 0 and s2.done == s.failed

    # every asset id exactly once, status done, in the compacted manifest
    manifest.compact(str(out))
    table = pq.read_table(out / "manifest" / "manifest.parquet")
    ids = table.column("asset_id").to_pylist()
    expected = {r.asset_id for r in read_prompts(str(prompts), cfg).requests}
    assert len(ids) == len(set(ids)) == N_PROMPTS and set(ids) == expected
    assert set(table.column("status").to_pylist()) == {"done"}
    assert sorted(table.column("prompt").to_pylist()) == sorted(PROMPTS)
    assert list((out / "manifest" / "parts").iterdir()) == []

    # no temp file anywhere under the output root (killed writes were cleaned up), none visible
    assert open_storage(str(out)).orphan_temp_files() == []
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]

    # attempts: the killer hit running assets; each interrupted attempt is counted
    rows = {r["asset_id"]: r for r in table.to_pylist()}
    interrupted = {f.name.split("-")[1] for f in log_dir.glob("running-*")}
    assert killer.kills and interrupted, f"the killer interrupted nothing: {killer.kills}"
    starts: dict[str, int] = {}
    for f in log_dir.glob("start-*"):
        starts[f.name.split("-")[1]] = starts.get(f.name.split("-")[1], 0) + 1
    for aid, r in rows.items():
        assert r["attempts"] >= starts[aid] >= 1, (aid, r["attempts"], starts[aid])
        # the raw manifest stores URIs relative to the run root (absolute ones join as themselves)
        assert (out / r["asset_uri"]).read_bytes() == b"ply\n" + r["prompt"].encode()
        assert r["num_gaussians"] == ITERATIONS  # the state went through exactly 12 steps
    for aid in interrupted:
        assert rows[aid]["attempts"] >= 2, rows[aid]
    # a killed asset resumed from (at least) the checkpoint committed when it was killed
    for aid, _, seen in killer.kills:
        if aid in interrupted:
            assert rows[aid]["resumed_from_iter"] >= seen, (rows[aid], seen)
    assert any(rows[aid]["resumed_from_iter"] > 0 for aid in interrupted) or \
        all(seen == 0 for _, _, seen in killer.kills)
    assert sum(r["attempts"] for r in rows.values()) >= N_PROMPTS + len(interrupted)
