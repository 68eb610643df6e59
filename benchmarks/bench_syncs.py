"""Host reads of tensor values per generate iteration (each is a device sync on a GPU).

Counts every Tensor -> host conversion (`item`, `tolist`, `float`, `int`, `bool`, `cpu`, `numpy`)
during a short toy-world generate per method, split by iteration at the loop's per-iteration
`deadline.check`. Prints the median per iteration of: all conversions; those of the host-side
draws (cameras, flags, timesteps: CPU generators, never a device sync); the torch renderer's
(tile binning on the host; CUDA runs use gsplat); and the rest, the loop's own reads of device
values. Iterations that log or checkpoint are left out. Usage: python benchmarks/bench_syncs.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from common import deadline
from common.config import ConfigError, load_config
from stages import generate as G

CONVERSIONS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")
HOST_DRAWS = {"draw_iteration", "sample_training_cameras", "look_at", "_randint"}
ITERS = 8


def kind_of_caller() -> str:
    f = sys._getframe(2)
    kind = "loop"
    while f is not None:
        if f.f_code.co_name in HOST_DRAWS:
            return "host draws"
        if Path(f.f_code.co_filename).name == "render.py":
            kind = "renderer"
        f = f.f_back
    return kind


def count(method: str) -> dict[str, float]:
    overrides = ["generate.iterations=%d" % ITERS, "generate.checkpoint_every=0", "generate.save_ply_at=[]",
                 "generate.densify.start=100000", f"generate.method={method}"]
    try:
        cfg = load_config("toy.yaml", overrides + ["generate.log_every=100000"])
    except ConfigError:                       # code from before generate.log_every
        cfg = load_config("toy.yaml", overrides)
    per_it: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    state = {"it": 0}
    saved = {n: getattr(torch.Tensor, n) for n in CONVERSIONS}
    saved_check = deadline.check

    def wrap(fn):
        def conv(self, *a, **k):
            per_it[state["it"]][kind_of_caller()] += 1
            return fn(self, *a, **k)
        return conv

    def check(what):
        if what.startswith("generate iteration "):
            state["it"] = int(what.rsplit(" ", 1)[1])
        saved_check(what)

    try:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, wrap(fn))
        deadline.check = check
        G.generate(cfg, "a red cube", 0, tempfile.mkdtemp(), progress=False)
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)
        deadline.check = saved_check
    its = range(2, ITERS)                     # not the first (embeds) nor the last (logs, writes)
    out = {k: statistics.median(per_it[i][k] for i in its) for k in ("host draws", "renderer", "loop")}
    out["all"] = statistics.median(sum(per_it[i].values()) for i in its)
    return out


def main() -> None:
    torch.set_num_threads(1)
    print("| method | all conversions | host draws | torch renderer | loop reads of device values |")
    print("|---|--:|--:|--:|--:|")
    for m in ("sds", "ism", "cds", "gcs", "sctd"):
        r = count(m)
        print(f"| {m} | {r['all']:g} | {r['host draws']:g} | {r['renderer']:g} | {r['loop']:g} |")


if __name__ == "__main__":
    main()
