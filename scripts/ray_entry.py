#!/usr/bin/env python
"""Entry script for `ray submit ray_cluster.yaml scripts/ray_entry.py -- PROMPTS --config CFG --out URI`
(and `ray job submit ... -- python scripts/ray_entry.py ...`).

Runs on the cluster's head node, connects to the running cluster (`--address auto`) and runs the
batch with the Ray executor. Re-running the same command resumes: committed assets are skipped.
Exit codes (as `sctd3d run`): 0 every asset done; 1 some failed or were rejected, or the report
says a metric regressed; 2 a bad command line, config, input file or store (one line
`ray_entry.py: error: ...` on stderr); 130 / 143 stopped by SIGINT / SIGTERM (re-run to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ray_entry.py", description=__doc__.splitlines()[0])
    ap.add_argument("prompts", help="prompt list: .txt / .jsonl / .parquet, local or s3:// / gs://")
    ap.add_argument("--config", required=True, help="config YAML (e.g. configs/sd21.yaml)")
    ap.add_argument("--out", required=True, help="output root, e.g. s3://bucket/run1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, repeatable (e.g. generate.iterations=2000)")
    ap.add_argument("--address", default="auto", help="Ray address (default: the running cluster)")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="GPU actors (default: pipeline.num_workers; 0 = one per GPU now present, on an "
                         "autoscaling cluster min(assets, pipeline.max_workers), started as nodes come up)")
    ap.add_argument("--storage-option", dest="storage_options", action="append", default=[],
                    metavar="KEY=VALUE", help="fsspec option for an object-store --out (repeatable)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks for errors")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipeline.cli import _storage_options, guarded

    def run() -> int:
        from common.config import load_config
        from pipeline.run import run_batch

        cfg = load_config(args.config, args.set)
        summary = run_batch(args.prompts, cfg, args.out, executor="ray", address=args.address or None,
                            num_workers=args.num_workers, progress=not args.no_progress,
                            storage_options=_storage_options(args))
        print(summary.line())
        return summary.exit_code()

    return guarded("ray_entry.py", run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
