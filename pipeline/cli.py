"""The `sctd3d` command. Each subcommand parses its arguments and calls one stage/pipeline function.

Stage modules are imported lazily so `sctd3d --help` and cheap commands start fast.
Only explicit `--set key=value` overrides change a config value; flags never carry hidden defaults
that override YAML (a flag given on the command line is applied as an explicit override and logged).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.config import ConfigError, dump_yaml, load_config

log = logging.getLogger("sctd3d")


def _add_config_args(p: argparse.ArgumentParser, default: str | None = "toy.yaml") -> None:
    p.add_argument("--config", default=default,
                   help=f"YAML config (path, or a shipped name like toy.yaml, sd21.yaml; default {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="explicit dotted override, e.g. --set generate.iterations=200 (repeatable)")


def _cfg(args: argparse.Namespace, extra: list[str] | None = None):
    return load_config(args.config, list(args.overrides) + list(extra or []))


def cmd_generate(args: argparse.Namespace) -> int:
    from stages.generate import generate

    extra = [f"generate.seed={args.seed}"] if args.seed is not None else []
    cfg = _cfg(args, extra)
    from stages.init import check_requirements

    check_requirements(cfg.init)  # before the prior loads (Point-E missing: one line, exit 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = generate(cfg, args.prompt, cfg.generate.seed, str(out), progress=not args.quiet)
    print(f"asset: {out / 'asset.ply'}")
    print(f"meta:  {out / 'meta.json'}")
    return 0 if getattr(res, "ok", True) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.run import run_batch

    extra = []
    if args.executor is not None:
        extra.append(f"pipeline.executor={args.executor}")
    if args.num_workers is not None:
        extra.append(f"pipeline.num_workers={args.num_workers}")
    cfg = _cfg(args, extra)
    summary = run_batch(args.prompts, cfg, args.out, executor=cfg.pipeline.executor,
                        address=args.address, num_workers=cfg.pipeline.num_workers or None)
    print(summary.line())
    print(summary.where())
    return 1 if summary.failed else 0


def _fmt_summary(summary) -> str:
    if isinstance(summary, dict):
        return "\n".join(f"{k}: {v}" for k, v in summary.items())
    return str(summary)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.run import demo

    summary = demo(args.out, num_workers=args.num_workers, n_prompts=args.prompts)
    print(summary.line())
    print(summary.where())
    return 1 if summary.failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stages.evaluate import evaluate

    cfg = _cfg(args)
    result = evaluate(args.target, cfg)
    print(_fmt_summary(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from stages.report import run_cli

    return int(run_cli(args))


def cmd_manifest(args: argparse.Namespace) -> int:
    from pipeline import manifest

    if args.action == "compact":
        print(manifest.compact(args.uri))
    else:
        print(manifest.show(args.uri))
    return 0


def cmd_toy_list(args: argparse.Namespace) -> int:
    from stages.toyworld.catalogue import format_catalogue, load_catalogue

    if args.prompts_only:  # a prompt file for `sctd3d run` (e.g. the nightly toy run)
        print("\n".join(load_catalogue(args.catalogue or None).prompts()))
    else:
        print(format_catalogue(args.catalogue or None))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from pipeline.config import config_hash

    cfg = _cfg(args)
    print(dump_yaml(cfg), end="")
    print(f"# config_hash: {config_hash(cfg)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sctd3d", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="generate one asset from a prompt")
    p.add_argument("prompt")
    p.add_argument("--out", required=True, help="asset directory")
    p.add_argument("--seed", type=int, default=None, help="same as --set generate.seed=N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("run", help="batch: prompts file/URI -> assets, renders, metrics, manifest")
    p.add_argument("prompts", help="txt / jsonl / parquet, local path or fsspec URL")
    p.add_argument("--out", required=True, help="output root (local path, s3://, gs://)")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="same as --set pipeline.executor=...")
    p.add_argument("--address", default=None, help="Ray address (e.g. auto) for an existing cluster")
    p.add_argument("--num-workers", type=int, default=None, help="same as --set pipeline.num_workers=N")
    _add_config_args(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="the embedded demo: toy prompts through Ray on local CPUs")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--num-workers", type=int, default=None, help="Ray CPU workers (default: cores)")
    p.add_argument("--prompts", type=int, default=4, help="how many toy prompts (>= 1)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("evaluate", help="re-score existing assets (asset dir or manifest URI)")
    p.add_argument("target")
    _add_config_args(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("report", help="static HTML quality report + regression decision (exit 1 on regression)")
    from stages.report import add_arguments as add_report_arguments

    add_report_arguments(p)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("manifest", help="manifest tools")
    p.add_argument("action", choices=("compact", "show"))
    p.add_argument("uri", help="run output root")
    p.set_defaults(fn=cmd_manifest)

    p = sub.add_parser("toy", help="toy world: list the catalogue, train the toy SD prior")
    toy = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = toy.add_parser("list", help="print the catalogue (or only its prompts)")
    q.add_argument("--catalogue", default=None, help="catalogue YAML (default: shipped)")
    q.add_argument("--prompts-only", action="store_true", help="one prompt per line (a prompt file)")
    q.set_defaults(fn=cmd_toy_list)
    # listed for --help; `main` hands `toy train-prior ...` to the trainer's own parser
    toy.add_parser("train-prior", help="train the toy SD prior (sctd3d toy train-prior --help)")

    p = sub.add_parser("config", help="print the resolved config and its hash")
    _add_config_args(p)
    p.set_defaults(fn=cmd_config)
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["toy", "train-prior"]:
        # its own parser owns every option, --help included (argparse's REMAINDER cannot take them)
        from stages.toyworld.train_prior import main as train_main

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        sys.exit(int(train_main(argv[2:]) or 0))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = args.fn(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        code = 2
    except _user_errors() as e:
        # errors whose message already says what is wrong and what to do: no traceback
        print(f"sctd3d {args.command}: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that carry a user-facing message (imported only once something failed)."""
    from kernels.ply import PlyFormatError
    from pipeline.inputs import InputError
    from pipeline.lock import LockHeld
    from pipeline.manifest import ManifestError
    from pipeline.storage import StorageError
    from stages.generate import CheckpointError
    from stages.init import InitError
    from stages.metrics.errors import MetricWeightsError
    from stages.priors.stable_diffusion import PriorLoadError
    from stages.report import ReportError

    return (PlyFormatError, InputError, LockHeld, ManifestError, StorageError, CheckpointError,
            InitError, MetricWeightsError, PriorLoadError, ReportError, FileNotFoundError)


if __name__ == "__main__":
    main()
