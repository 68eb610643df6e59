"""Cost of asset identity: hashing the prior's weights (cold, then cached by path/size/mtime) and
computing the ids of a prompt file.

Run: .venv/bin/python benchmarks/bench_asset_identity.py [--mb 512] [--prompts 10000]
(prints a Markdown table; the synthetic weights file is written to a temp dir and removed)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common.config import load_config
from pipeline.inputs import read_prompts
from stages.priors import identity
from stages.priors.stable_diffusion import TOY_SD_DIR


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512, help="synthetic .safetensors size in MB")
    ap.add_argument("--prompts", type=int, default=10_000, help="prompt-file rows")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    size_mb = sum(f.stat().st_size for f in TOY_SD_DIR.rglob("*") if f.is_file()) / 1e6
    rows.append((f"shipped toy SD dir ({size_mb:.1f} MB), cold", timed(lambda: identity.tree_digest(TOY_SD_DIR))))
    rows.append(("shipped toy SD dir, cached (stat only)", timed(lambda: identity.tree_digest(TOY_SD_DIR))))
    with tempfile.TemporaryDirectory(prefix="sctd3d-bench-id-") as tmp:
        f = Path(tmp) / "model.safetensors"
        block = os.urandom(1 << 20)
        with open(f, "wb") as fh:
            for _ in range(a.mb):
                fh.write(block)
        cold = timed(lambda: identity.file_digest(f))
        rows.append((f"{a.mb} MB .safetensors, cold (page cache warm)", cold))
        rows.append((f"{a.mb} MB .safetensors, cached", timed(lambda: identity.file_digest(f))))
        p = Path(tmp) / "prompts.txt"
        p.write_text("".join(f"prompt number {i}\n" for i in range(a.prompts)))
        cfg = load_config("toy.yaml", ["metrics.metrics=[clip_l]"])  # any prompt is valid
        n = 0

        def ids() -> None:
            nonlocal n
            n = len(read_prompts(str(p), cfg).requests)

        rows.append((f"read_prompts + ids, {a.prompts:,} rows (toy SD prior)", timed(ids)))
    print("| step | seconds |\n|---|--:|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} |")
    print(f"\nsha256 throughput: {a.mb / cold:.0f} MB/s; {n} requests")


if __name__ == "__main__":
    main()
