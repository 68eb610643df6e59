"""Count the UNet forwards of a generation and check them against docs/METHOD.md (test helper).

`UNetCallRecorder` wraps `UNet2DConditionModel.forward` (a module attribute, patched by the test
or benchmark) and records each call's batch rows and timesteps. `check_iterations` splits the
calls into iterations by the spec's call pattern per method and returns, per iteration, the
UNet evaluations (batch rows / views): the guided call batches cond + neg (2B rows; Perp-Neg 4B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class UNetCall:
    rows: int
    t: tuple[int, ...]


@dataclass
class UNetCallRecorder:
    calls: list[UNetCall] = field(default_factory=list)

    def install(self, monkeypatch) -> None:  # noqa: ANN001 (pytest's MonkeyPatch)
        from diffusers import UNet2DConditionModel

        real = UNet2DConditionModel.forward
        rec = self

        def forward(unet, sample, timestep, *args, **kwargs):
            ts = timestep.reshape(-1).tolist() if hasattr(timestep, "reshape") else [int(timestep)]
            rec.calls.append(UNetCall(rows=int(sample.shape[0]), t=tuple(int(x) for x in ts)))
            return real(unet, sample, timestep, *args, **kwargs)

        monkeypatch.setattr(UNet2DConditionModel, "forward", forward)


@dataclass
class Iteration:
    calls: int
    evaluations: int      # UNet evaluations per view (rows / B)
    t: int                # the guided call's timestep


def _take(calls: list[UNetCall], i: int, rows: int, what: str) -> UNetCall:
    if i >= len(calls):
        raise AssertionError(f"ran out of UNet calls: expected {what}")
    if calls[i].rows != rows:
        raise AssertionError(f"UNet call {i}: expected {what} with {rows} rows, got {calls[i].rows}")
    return calls[i]


def check_iterations(calls: list[UNetCall], method: str, views: int, perp_neg: bool = False,
                     t_tau: int = 150, ism_delta_t: int = 50, ism_delta_s: int = 200,
                     consistency_approx: bool = True) -> list[Iteration]:
    """Split `calls` into iterations by the spec's pattern for `method`; raises on any deviation.

    SCTD / CDS / GCS: null inversion s_m -> t (2 calls when t >= t_tau: s_m -> s -> t, else 1),
    the guided call at t, then eps(x_s_hat, s, null) for the self-consistency target (plus
    eps(x_t, t, null) when the consistency approximation is off). SDS: the guided call only.
    ISM: null inversion 0 -> s in strides of delta_s, eps(x_s, s, null), the guided call at t.
    """
    b, g = views, views * (4 if perp_neg else 2)
    out: list[Iteration] = []
    i = 0
    while i < len(calls):
        start = i
        if method == "sds":
            guided = _take(calls, i, g, "the guided call"); i += 1
        elif method == "ism":
            inv = 0
            while i < len(calls) and calls[i].rows == b:
                i += 1; inv += 1
            guided = _take(calls, i, g, "the guided call"); i += 1
            s = max(guided.t[0] - ism_delta_t, 0)
            want = math.ceil((s + 1) / ism_delta_s) + 1
            if inv != want:
                raise AssertionError(f"ISM iteration at t={guided.t[0]}: {inv} null calls, spec {want}")
        elif method in ("sctd", "cds", "gcs"):
            inv = 0
            while i < len(calls) and calls[i].rows == b:
                i += 1; inv += 1
            guided = _take(calls, i, g, "the guided call"); i += 1
            t = guided.t[0]
            want = 2 if t >= t_tau else 1
            if inv != want:
                raise AssertionError(f"{method} iteration at t={t}: {inv} inversion calls, spec {want}")
            s_m = calls[start].t[0]
            if not s_m < t:
                raise AssertionError(f"{method}: inversion starts at {s_m}, not below t={t}")
            for _ in range(1 if consistency_approx else 2):
                _take(calls, i, b, "a null call after the guided one"); i += 1
        else:
            raise ValueError(f"unknown method {method!r}")
        rows = sum(c.rows for c in calls[start:i])
        out.append(Iteration(calls=i - start, evaluations=rows // views, t=guided.t[0]))
    return out
