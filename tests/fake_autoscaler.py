"""Ray's own fake autoscaling cluster, started so that it is safe on a shared machine.

`ray.cluster_utils.AutoscalingCluster` runs `ray stop --force` before and after (that kills every
Ray process of every user of the machine) and reads a config file the PyPI wheel does not ship. This
starts the same thing by hand: a head node (`ray start --head --block`, so every process of the
cluster stays a descendant of one process) with Ray's `fake_multinode` node provider and the v2
autoscaler (what `ray up` runs since Ray 2.50), on free ports and a private temp folder. The fake
provider launches worker nodes (extra raylets on this machine) when there is demand for their
resources, after the autoscaler's own delay; their resources may name a `GPU` that is not there.
`stop()` ends exactly the processes the cluster started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeAutoscalingCluster:
    def __init__(self, worker_node_types: dict, head_cpus: int = 0, idle_timeout_minutes: float = 5):
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        self.head_id = FAKE_HEAD_NODE_ID
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # short path: raylet sockets live under it (AF_UNIX paths are limited to 107 bytes)
        self.tmp = Path(tempfile.mkdtemp(prefix="fas", dir="/tmp"))
        self.head_cpus = head_cpus
        self.config = {
            "cluster_name": "fake_multinode",
            "max_workers": sum(t.get("max_workers", 0) for t in worker_node_types.values()),
            # "external" + the fake provider's class: the "fake_multinode" type reads a defaults file
            # (fake_multi_node/example.yaml) that the wheel does not ship
            "provider": {"type": "external", "module": _PROVIDER, "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "launch_multiple": True,
                         "head_node_id": FAKE_HEAD_NODE_ID, "gcs_address": self.address},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
                **worker_node_types,
            },
            "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        }
        self.proc: subprocess.Popen | None = None
        self._seen: dict[int, psutil.Process] = {}

    def start(self, timeout_s: float = 120.0) -> "FakeAutoscalingCluster":
        cfg = self.tmp / "autoscaling.json"
        cfg.write_text(json.dumps(self.config))
        env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
                   RAY_enable_autoscaler_v2="1", RAY_CLOUD_INSTANCE_ID=self.head_id,
                   RAY_OVERRIDE_NODE_ID_FOR_TESTING=self.head_id, RAY_NODE_TYPE_NAME="ray.head.default",
                   RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
        ray_cli = str(Path(sys.executable).with_name("ray"))
        cmd = [ray_cli, "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
               "--num-gpus=0", f"--autoscaling-config={cfg}", f"--temp-dir={self.tmp / 'ray'}",
               "--include-dashboard=false", "--dashboard-agent-listen-port=0", "--disable-usage-stats",
               f"--ray-client-server-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
               f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
        self.log = open(self.tmp / "head.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:  # up when the GCS port accepts connections
            self._remember()
            if self.proc.poll() is not None:
                raise RuntimeError(f"the fake cluster's head exited: {(self.tmp / 'head.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the fake cluster's head did not start within {timeout_s:.0f} s")

    def _remember(self) -> None:
        """Record the cluster's processes (descendants of the head's `ray start`), so that stop()
        can end those that were re-parented too."""
        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self._seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> None:
        self._remember()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for p in self._seen.values():  # what is left (e.g. the fake worker nodes' raylets)
            try:
                if p.is_running():
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(self._seen.values()), timeout=10)
        if self.proc is not None:
            self.proc.wait()
            self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
