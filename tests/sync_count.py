"""Test helper: count the host <-> device transfers of each generate iteration, on the CPU.

On a GPU the host waits for the device at each device-to-host read (`.item()`, `.tolist()`,
`float()`, `int()`, `bool()`, `.cpu()`, `.numpy()` of a device tensor) and, for a copy from
pageable host memory, at each host-to-device copy. A CPU run has no device, so the two are found
by what the code asks for:
- D2H: `count_syncs` patches the conversions on `torch.Tensor` and counts every call;
- H2D: a `TorchFunctionMode` follows which tensors hold host data (made by a data factory such as
  `torch.tensor(list)`, a CPU generator draw or any factory without a `device=`, and everything
  computed from host tensors only) and counts each place where host data would travel to the
  device: `.to(device)` / `.cuda()` / `torch.tensor(data, device=...)` / `torch.as_tensor(..,
  device=...)` of host data, `copy_` / `__setitem__` of a host tensor into a device tensor, and an
  op mixing a host tensor of >= 1 dims with device tensors (an implicit copy, or an error on CUDA).
  Tensors made before the count starts (model weights) are device tensors; `.to("cpu")` /
  `.cpu()` make host tensors; a `torch.device` target is the compute device.
Counts are split by iteration through the loop's once-per-iteration `deadline.check("generate
iteration N")`, and each record has a kind:
- "host": made while drawing the iteration's host-side randomness (`draw_iteration`),
- "renderer": inside kernels/render.py (the torch reference renderer bins tiles on the host; the
  CUDA runs use gsplat),
- "device": everything else, i.e. the loop's own transfers.
Each record names its project caller (file:function) so a failing bound says where it came from.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

CONVERSIONS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")
ROOT = Path(__file__).resolve().parent.parent
HOST_DRAW_FUNCTIONS = {"draw_iteration"}
_DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}
_HOST = "_sync_count_host"   # attribute on tensors holding host data


def _is_host(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _HOST, False)


def _mark(out, host: bool) -> None:
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            try:
                setattr(t, _HOST, host)
            except (AttributeError, RuntimeError):   # some C++-owned tensors refuse attributes
                pass


def _in_host_draw() -> bool:
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_name in HOST_DRAW_FUNCTIONS:
            return True
        f = f.f_back
    return False


def _target(args, kwargs):
    """'host', 'device', or None (no device named) for a .to()/.cuda()/factory call's target."""
    dev = kwargs.get("device")
    cands = [dev] if dev is not None else [a for a in args if isinstance(a, (torch.device, str, int, torch.Tensor))
                                           and not isinstance(a, bool)]
    for a in cands:
        if isinstance(a, torch.Tensor):
            return "host" if _is_host(a) else "device"
        if isinstance(a, str) and a == "cpu":
            return "host"
        # a torch.device / cuda index: the compute device, except in the host draws, whose
        # `device=x.device` keeps host tensors on the host
        return "host" if _in_host_draw() else "device"
    return None


class SyncCounter:
    def __init__(self) -> None:
        self.iteration = 0
        self.inside = False
        self.records: dict[int, list[tuple[str, str, str]]] = defaultdict(list)  # it -> [(dir, kind, where)]

    def record(self, conversion: str, direction: str = "d2h", depth: int = 2) -> None:
        caller, kind = None, "device"
        f = sys._getframe(depth)
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
        self.records[self.iteration].append((direction, kind, f"{conversion}@{caller}"))

    def on_iteration(self, what: str) -> None:
        if what.startswith("generate iteration "):
            self.iteration = int(what.rsplit(" ", 1)[1])

    def count(self, it: int, kind: str, direction: str = "d2h") -> int:
        return sum(1 for d, k, _ in self.records[it] if k == kind and d == direction)

    def where(self, it: int, kind: str, direction: str = "d2h") -> Counter:
        return Counter(w for d, k, w in self.records[it] if k == kind and d == direction)


class _HostToDevice(TorchFunctionMode):
    """Follows host data through torch calls; records each host -> device transfer."""

    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.c = counter

    def _h2d(self, what: str) -> None:
        self.c.record(what, "h2d", depth=3)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if func in (torch.Tensor.to, torch.Tensor.cuda):
            src, target = args[0], ("device" if func is torch.Tensor.cuda else _target(args[1:], kwargs))
            if target == "device" and _is_host(src):
                self._h2d(name)
            _mark(out, _is_host(src) if target is None else target == "host")
            return out
        if func in _DATA_FACTORIES:
            data = args[1] if func is torch.Tensor.new_tensor else (args[0] if args else kwargs.get("data"))
            target = _target((), kwargs)
            if target is None and func is torch.Tensor.new_tensor:
                target = "host" if _is_host(args[0]) else "device"
            src_host = _is_host(data) if isinstance(data, torch.Tensor) else True
            if target == "device" and src_host:
                self._h2d(name)
            _mark(out, src_host if target is None else target == "host")
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in (torch.Tensor.copy_, torch.Tensor.__setitem__):
            dst = args[0]
            if not _is_host(dst) and any(_is_host(t) and t.dim() > 0 for t in tensors[1:]):
                self._h2d(name)
            return out
        if name == "pin_memory" or name == "cpu":
            _mark(out, True)
            return out
        if not tensors:                        # other factories: where their device= says
            _mark(out, _target((), kwargs) != "device")
            return out
        host = [_is_host(t) for t in tensors]
        if all(host):
            _mark(out, True)
        elif any(h and t.dim() > 0 for h, t in zip(host, tensors)):
            self._h2d(f"mixed:{name}")         # a host tensor meets device tensors
            _mark(out, False)
        elif not (name.endswith("_") and out is args[0]):
            _mark(out, False)
        return out


@contextlib.contextmanager
def count_syncs(deadline_module=None, h2d: bool = True):
    """Yields a SyncCounter filled while the block runs; `deadline_module` is the module whose
    `check` the generate loop calls once per iteration (None: everything is iteration 0).
    `h2d=False` counts D2H reads only."""
    c = SyncCounter()
    saved = {n: getattr(torch.Tensor, n) for n in CONVERSIONS}
    saved_check = deadline_module.check if deadline_module is not None else None

    def counted(name, fn):
        def conversion(self, *a, **k):
            if c.inside:                     # the torch-function mode calls the patched method again
                return fn(self, *a, **k)
            c.record(name)
            c.inside = True
            try:
                return fn(self, *a, **k)
            finally:
                c.inside = False
        return conversion

    def check(what: str) -> None:
        c.on_iteration(what)
        saved_check(what)

    mode = _HostToDevice(c) if h2d else contextlib.nullcontext()
    try:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, counted(n, fn))
        if deadline_module is not None:
            deadline_module.check = check
        with mode:
            yield c
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)
        if deadline_module is not None:
            deadline_module.check = saved_check
