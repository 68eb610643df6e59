"""Test helper: count Tensor -> host conversions per generate iteration.

On a GPU each conversion (`.item()`, `.tolist()`, `float()`, `int()`, `bool()`, `.cpu()`,
`.numpy()`) of a device tensor makes the host wait for the device's queue. `count_syncs` patches
them on `torch.Tensor`, splits the counts by iteration through the loop's once-per-iteration
`deadline.check("generate iteration N")`, and files each conversion under a kind:
- "host": made while drawing the iteration's host-side randomness (`draw_iteration`: cameras,
  flags, timesteps from CPU generators; never a device sync on a GPU),
- "renderer": inside kernels/render.py (the torch reference renderer bins tiles on the host; the
  CUDA runs use gsplat),
- "device": everything else, i.e. the loop's own reads of device values.
Each record names its project caller (file:function) so a failing bound says where it came from.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch

CONVERSIONS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")
ROOT = Path(__file__).resolve().parent.parent
HOST_DRAW_FUNCTIONS = {"draw_iteration"}


class SyncCounter:
    def __init__(self) -> None:
        self.iteration = 0
        self.records: dict[int, list[tuple[str, str]]] = defaultdict(list)  # it -> [(kind, where)]

    def record(self, conversion: str) -> None:
        caller, kind = None, "device"
        f = sys._getframe(2)
        while f is not None:
            path = Path(f.f_code.co_filename)
            if str(path).startswith(str(ROOT)) and "tests" not in path.parts:
                caller = caller or f"{path.name}:{f.f_code.co_name}"
                if f.f_code.co_name in HOST_DRAW_FUNCTIONS:
                    kind = "host"
                    break
                if path.name == "render.py" and path.parent.name == "kernels":
                    kind = "renderer"
            f = f.f_back
        self.records[self.iteration].append((kind, f"{conversion}@{caller}"))

    def on_iteration(self, what: str) -> None:
        if what.startswith("generate iteration "):
            self.iteration = int(what.rsplit(" ", 1)[1])

    def count(self, it: int, kind: str) -> int:
        return sum(1 for k, _ in self.records[it] if k == kind)

    def where(self, it: int, kind: str) -> Counter:
        return Counter(w for k, w in self.records[it] if k == kind)


@contextlib.contextmanager
def count_syncs(deadline_module):
    """Yields a SyncCounter filled while the block runs; `deadline_module` is the module whose
    `check` the generate loop calls once per iteration."""
    c = SyncCounter()
    saved = {n: getattr(torch.Tensor, n) for n in CONVERSIONS}
    saved_check = deadline_module.check

    def counted(name, fn):
        def conversion(self, *a, **k):
            c.record(name)
            return fn(self, *a, **k)
        return conversion

    def check(what: str) -> None:
        c.on_iteration(what)
        saved_check(what)

    try:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, counted(n, fn))
        deadline_module.check = check
        yield c
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)
        deadline_module.check = saved_check
