"""Host <-> device transfers per generate iteration (each can make the host wait on a GPU).

Counts, during a short toy-world generate per method (toy SD prior, the production SD code path,
loaded before counting like a worker's resident prior; CPU, torch renderer, densification off),
every device-to-host read (`item`, `tolist`, `float`, `int`, `bool`, `cpu`, `numpy`) and every
host-to-device copy, found on the CPU by following host data through torch calls
(tests/sync_count.py says how). Split by iteration at the loop's per-iteration `deadline.check`;
prints the median per iteration of: D2H reads of the loop (the rest are the host-side draws,
CPU generators, never a device sync, and the torch renderer's tile binning: CUDA runs use gsplat),
and H2D copies of the loop and of the renderer. Iterations that log or write are left out.
Usage: python benchmarks/bench_syncs.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from common import deadline  # noqa: E402
from common.config import load_config  # noqa: E402
from stages import generate as G  # noqa: E402
from stages.priors.registry import load_prior  # noqa: E402
from sync_count import count_syncs  # noqa: E402

ITERS = 8


def count(method: str) -> dict[str, float]:
    cfg = load_config("toy.yaml", ["generate.iterations=%d" % ITERS, "generate.checkpoint_every=0",
                                   "generate.save_ply_at=[]", "generate.densify.start=100000",
                                   f"generate.method={method}", "generate.log_every=100000"])
    prior = load_prior(cfg.prior, cfg.prior.device, toy=cfg.toy)
    with count_syncs(deadline) as c:
        G.generate(cfg, "a red cube", 0, tempfile.mkdtemp(), progress=False, prior=prior)
    its = range(2, ITERS)                     # not the first nor the last (logs, writes)
    med = lambda f: statistics.median(f(i) for i in its)  # noqa: E731
    return {"d2h loop": med(lambda i: c.count(i, "device")),
            "d2h host draws": med(lambda i: c.count(i, "host")),
            "d2h renderer": med(lambda i: c.count(i, "renderer")),
            "h2d loop": med(lambda i: c.count(i, "device", "h2d")),
            "h2d renderer": med(lambda i: c.count(i, "renderer", "h2d")),
            "h2d where": dict(c.where(2, "device", "h2d"))}


def main() -> None:
    torch.set_num_threads(1)
    print("| method | D2H reads, loop | H2D copies, loop | H2D, torch renderer | D2H host draws (CPU) | D2H torch renderer |")
    print("|---|--:|--:|--:|--:|--:|")
    wheres = {}
    for m in ("sds", "ism", "cds", "gcs", "sctd"):
        r = count(m)
        wheres[m] = r["h2d where"]
        print(f"| {m} | {r['d2h loop']:g} | {r['h2d loop']:g} | {r['h2d renderer']:g} | {r['d2h host draws']:g} "
              f"| {r['d2h renderer']:g} |")
    for m, w in wheres.items():
        print(f"{m} H2D at iteration 2: {w}")


if __name__ == "__main__":
    main()
