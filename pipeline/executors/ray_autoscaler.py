"""What the Ray cluster's autoscaler is doing, as the driver sees it (for RayExecutor's wait).

Why: on an autoscaling cluster (`ray up ray_cluster.yaml`, `min_workers: 0`) a run starts with no
GPU node; its worker actors are the resource demand that makes the autoscaler launch nodes, and a
spot launch plus node setup (image, wheels, the gsplat build) takes many minutes. The run must wait
while nodes are being launched, and stop at once when no node type can ever hold a worker.

Sources (both on the GCS the driver is connected to; nothing is polled from the cloud):
- autoscaler v2 (what `ray up` runs since Ray 2.50): `GetClusterStatus` -> `AutoscalingState`:
  pending instance requests and pending instances per node type, failed launches, and the resource
  requests it found infeasible (no node type in the cluster config can hold them).
- autoscaler v1: its debug status in the GCS key-value store (`__autoscaling_status`): pending
  launches and pending nodes. It does not say what is infeasible (the run then relies on
  `worker_start_timeout_s`). A local `ray.init()` runs a read-only v1 monitor: nothing pending.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

log = logging.getLogger(__name__)

V1_STATUS_KEY = b"__autoscaling_status"


@dataclass
class ScalingView:
    autoscaler: str = ""           # "v2" (reports launches and infeasible requests), "v1", "" (none seen)
    launching: dict = field(default_factory=dict)   # node type -> nodes requested or starting
    infeasible: list = field(default_factory=list)  # resource shapes no node type can hold
    failed: list = field(default_factory=list)      # "node type: reason" of failed launches
    nodes: dict = field(default_factory=dict)       # node type -> count of nodes up now
    node_totals: list = field(default_factory=list)  # total resources of each node up now (v2)
    error: str = ""                # why the state could not be read

    def can_launch(self) -> bool:
        """An autoscaler that adds nodes on demand answers here (v2 reports its state)."""
        return self.autoscaler == "v2"

    def never_fits(self, request: dict) -> Optional[dict]:
        """`request` (one worker's resources) if no node type can ever hold it, else None.

        The v2 autoscaler lists as infeasible every request it cannot place even at full scale-up:
        both a shape no node type holds and the demand beyond the node types' max_workers (e.g. 64
        workers asked of 8 GPUs). Only the first is a reason to stop, so the request counts as
        never fitting when it is listed, nothing is being launched, and no node that is up could
        hold it (by its total resources: a busy node that could is capacity, not shape)."""
        want = {k: float(v) for k, v in request.items() if v}
        listed = any({k: float(v) for k, v in shape.items() if v} == want for shape in self.infeasible)
        if not listed or self.launching or self.fits_a_node_up(want):
            return None
        return want

    def fits_a_node_up(self, request: dict) -> bool:
        """Some node up now could hold `request` by its total resources (busy or not)."""
        want = {k: float(v) for k, v in request.items() if v}
        return any(all(total.get(k, 0.0) >= v for k, v in want.items()) for total in self.node_totals)

    def launching_text(self) -> str:
        return ", ".join(f"{n} x {t}" for t, n in sorted(self.launching.items())) or "nothing"

    def nodes_text(self) -> str:
        return ", ".join(f"{n} x {t}" for t, n in sorted(self.nodes.items())) or "none"


def read_scaling(gcs_client: Any = None, timeout_s: float = 5.0) -> ScalingView:
    """The autoscaler's state from the GCS of the connected Ray (`ray.init` first). Never raises:
    a state that cannot be read is a view with `error` set (and no autoscaler)."""
    if gcs_client is None:
        import ray

        gcs_client = ray._private.worker.global_worker.gcs_client
    view = ScalingView()
    try:
        _read_v2(gcs_client, view, timeout_s)
        if not view.autoscaler:
            _read_v1(gcs_client, view, timeout_s)
    except Exception as e:  # noqa: BLE001 - an unreadable state must not stop the run by itself
        view = ScalingView(error=f"{type(e).__name__}: {e}"[:300])
        log.debug("cannot read the autoscaler's state: %s", view.error)
    return view


def _read_v2(gcs_client: Any, view: ScalingView, timeout_s: float) -> None:
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    reply = GetClusterStatusReply()
    reply.ParseFromString(gcs_client.get_cluster_status(timeout_s=timeout_s))
    for node in reply.cluster_resource_state.node_states:
        if node.status != 2:  # DEAD
            name = node.ray_node_type_name or node.instance_type_name or "node"
            view.nodes[name] = view.nodes.get(name, 0) + 1
            view.node_totals.append(dict(node.total_resources))
    state = reply.autoscaling_state
    if state.autoscaler_state_version <= 0:  # no v2 autoscaler has reported
        return
    view.autoscaler = "v2"
    for req in state.pending_instance_requests:
        name = req.ray_node_type_name or req.instance_type_name
        view.launching[name] = view.launching.get(name, 0) + int(req.count)
    for inst in state.pending_instances:
        name = inst.ray_node_type_name or inst.instance_type_name
        view.launching[name] = view.launching.get(name, 0) + 1
    view.infeasible = [dict(r.resources_bundle) for r in state.infeasible_resource_requests]
    view.failed = [f"{f.ray_node_type_name or f.instance_type_name}: {f.reason}"[:300]
                   for f in state.failed_instance_requests][-3:]


def _read_v1(gcs_client: Any, view: ScalingView, timeout_s: float) -> None:
    raw = gcs_client.internal_kv_get(V1_STATUS_KEY, None, timeout=timeout_s)
    if not raw:
        return
    report = (json.loads(raw) or {}).get("autoscaler_report") or {}
    view.autoscaler = "v1"
    for name, n in (report.get("pending_launches") or {}).items():
        view.launching[name] = view.launching.get(name, 0) + int(n)
    for entry in report.get("pending_nodes") or []:  # (ip, node type, status)
        name = entry[1] if len(entry) > 1 else "node"
        view.launching[name] = view.launching.get(name, 0) + 1
    for name, n in (report.get("active_nodes") or {}).items():
        view.nodes[name] = view.nodes.get(name, 0) + int(n)
    view.failed = [f"{e[1]}: launch failed" for e in (report.get("failed_nodes") or [])
                   if isinstance(e, (list, tuple)) and len(e) > 1][-3:]
