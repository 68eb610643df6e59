#!/usr/bin/env python
"""Entry script for `ray submit ray_cluster.yaml scripts/ray_entry.py -- PROMPTS --config CFG --out URI`
(and `ray job submit ... -- python scripts/ray_entry.py ...`).

Runs on the cluster's head node, connects to the running cluster (`--address auto`) and runs the
batch with the Ray executor. Re-running the same command resumes: committed assets are skipped.
Exit code: 0 when every asset is done (or rejected as bad input), 1 when some failed, 2 on a bad
command line or config, the report's exit code when the report says a metric regressed.
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
                    help="GPU actors (default: pipeline.num_workers, 0 = one per GPU now present)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipeline.config import ConfigError, load_config
    from pipeline.run import run_batch
    from stages.init import InitError

    try:
        cfg = load_config(args.config, args.set)
        summary = run_batch(args.prompts, cfg, args.out, executor="ray", address=args.address,
                            num_workers=args.num_workers, progress=not args.no_progress)
    except (ConfigError, InitError) as e:  # bad config, or an init method that cannot run: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    if summary.failed:
        return 1
    return summary.report_exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
