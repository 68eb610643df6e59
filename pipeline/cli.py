"""The `sctd3d` command. Each subcommand parses its arguments and calls one stage/pipeline function.

Stage modules are imported lazily so `sctd3d --help` and cheap commands start fast.
Only explicit `--set key=value` overrides change a config value; flags never carry hidden defaults
that override YAML (a flag given on the command line is applied as an explicit override and logged).

Exit codes (the same for `run`, `demo`, `report` and scripts/ray_entry.py): 0 all done / no
regression; 1 some asset failed or was rejected, or a metric regressed; 2 the command could not do
its job (usage, config, input file or storage error: one line `sctd3d <cmd>: error: ...` on
stderr); 130 / 143 stopped by SIGINT / SIGTERM (re-run the same command to resume).
"""

from __future__ import annotations

from common.errors import UserError
import argparse
import logging
import sys
from pathlib import Path

from common.config import ConfigError, dump_yaml, load_config

log = logging.getLogger("sctd3d")


class UsageError(UserError, ValueError):
    """A bad command-line value; the message says which and what to give instead."""


def _add_config_args(p: argparse.ArgumentParser, default: str | None = "toy.yaml") -> None:
    p.add_argument("--config", default=default,
                   help=f"YAML config (path, or a shipped name like toy.yaml, sd21.yaml; default {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="explicit dotted override, e.g. --set generate.iterations=200 (repeatable)")


def _cfg(args: argparse.Namespace, extra: list[str] | None = None):
    from common.plugins import load_plugins
    from pipeline.validate import check_names

    cfg = load_config(args.config, list(args.overrides) + list(extra or []))
    load_plugins()                       # $SCTD3D_PLUGINS and entry points, then the config's:
    load_plugins(cfg.pipeline.plugins, source="pipeline.plugins")   # before the names are checked (plugins register names)
    return check_names(cfg)


def cmd_generate(args: argparse.Namespace) -> int:
    from stages.generate import generate

    if not args.prompt.strip():
        raise UsageError("the prompt is empty; give the text to generate, e.g. sctd3d generate "
                         "\"a red cube\" --out runs/one")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: is a file, not a folder; give an asset folder")
    extra = [f"generate.seed={args.seed}"] if args.seed is not None else []
    cfg = _cfg(args, extra)
    from pipeline.preflight import check_cache_dir

    check_cache_dir(cfg)
    from stages.init import check_requirements

    check_requirements(cfg.init)  # before the prior loads (Point-E missing: one line, exit 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = generate(cfg, args.prompt, cfg.generate.seed, str(out), progress=not args.quiet)
    print(f"asset: {out / 'asset.ply'}")
    print(f"meta:  {out / 'meta.json'}")
    return 0 if getattr(res, "ok", True) else 1


def _executor_overrides(args: argparse.Namespace) -> list[str]:
    """--executor / --num-workers as config overrides (run and evaluate take them alike)."""
    extra = []
    if args.executor is not None:
        extra.append(f"pipeline.executor={args.executor}")
    if args.num_workers is not None:
        extra.append(f"pipeline.num_workers={args.num_workers}")
    return extra


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.run import run_batch

    mesh = [f"pipeline.mesh={args.mesh}"] if args.mesh is not None else []
    cfg = _cfg(args, _executor_overrides(args) + mesh)
    summary = run_batch(args.prompts, cfg, args.out, executor=cfg.pipeline.executor,
                        address=args.address, num_workers=cfg.pipeline.num_workers or None,
                        storage_options=_storage_options(args), redo=args.redo)
    print(summary.line())
    print(summary.where())
    return summary.exit_code()


def _apply_storage_options(args: argparse.Namespace, uri: str) -> None:
    opts = _storage_options(args)
    if opts:
        from common.storage import set_storage_options

        set_storage_options(uri, opts)


def _add_storage_option_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", dest="storage_options", action="append", default=[],
                   metavar="KEY=VALUE", help="fsspec option for an object store, e.g. "
                   "endpoint_url=http://127.0.0.1:9000, profile=NAME, anon=true (repeatable)")


def _storage_options(args: argparse.Namespace) -> dict:
    """`--storage-option key=value` pairs (fsspec options of the output store), values YAML-typed."""
    import yaml

    opts: dict = {}
    for item in getattr(args, "storage_options", None) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--storage-option {item!r}: expected key=value, e.g. "
                             f"--storage-option endpoint_url=http://127.0.0.1:9000")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = opts
        *parents, leaf = key.strip().split(".")  # client_kwargs.region_name=... nests
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return opts


def _fmt_summary(summary) -> str:
    if isinstance(summary, dict):
        return "\n".join(f"{k}: {v}" for k, v in summary.items())
    return str(summary)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import demo

    from stages.toyworld.catalogue import list_objects

    n_objects = len(list_objects())
    if not 1 <= args.prompts <= n_objects:
        raise UsageError(f"--prompts {args.prompts}: give 1 to {n_objects} (the toy catalogue has "
                         f"{n_objects} prompts)")
    if args.num_workers is not None and args.num_workers < 1:
        raise UsageError(f"--num-workers {args.num_workers}: give 1 or more (or leave it out)")
    summary = demo(args.out, num_workers=args.num_workers, n_prompts=args.prompts)
    print(summary.line())
    print(summary.where())
    from pipeline.export import export_command

    print(f"dataset:  {export_command(summary.out)}")
    return summary.exit_code()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import EvaluateError, evaluate, evaluate_run, resolve_target

    cfg = _cfg(args, _executor_overrides(args))
    try:
        kind, where = resolve_target(args.target)
        if kind == "asset":
            print(_fmt_summary(evaluate(where, cfg)))
            return 0
        summary = evaluate_run(where, cfg, cfg.pipeline.executor, args.address,
                               cfg.pipeline.num_workers or None)
    except EvaluateError as e:  # e.g. the config changes a generation key: `sctd3d run` is the tool
        print(f"sctd3d evaluate: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    for line in summary.hints():
        print(line, file=sys.stderr)
    return summary.exit_code()


def _missing_dependency(command: str, e: ImportError) -> int:
    raise UsageError(f"`sctd3d {command}` needs {e.name or 'a package'} ({e}), which this install lacks; "
                     f"install the project with its dependencies (pip install -e .)")


def cmd_report(args: argparse.Namespace) -> int:
    from stages.report import run_cli

    _apply_storage_options(args, args.manifest_uri)

    return int(run_cli(args))


def cmd_manifest(args: argparse.Namespace) -> int:
    from common import manifest

    from pipeline.preflight import check_is_run

    _apply_storage_options(args, args.uri)
    check_is_run(args.uri)  # read-only: a mistyped path is refused, never created
    if args.action == "compact":
        print(manifest.compact(args.uri))
    else:
        print(manifest.show(args.uri))
    return 0


def _byte_size(text: str) -> int:
    """'1GB' / '500MB' / '2e9' -> bytes (decimal units), for --shard-bytes."""
    units = {"kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12, "b": 1}
    t = text.strip().lower()
    for u, m in units.items():
        if t.endswith(u):
            t, mult = t[:-len(u)].strip(), m
            break
    else:
        mult = 1
    try:
        return int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1GB, 500MB)") from None


def _mesh_options(items: list[str]) -> dict:
    """`--mesh key=value` pairs, values YAML-typed (checked by common.config.mesh_config)."""
    import yaml

    from pipeline.export import ExportError

    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ExportError(f"--mesh {item!r}: expected KEY=VALUE, e.g. resolution=128")
        out[k.strip()] = yaml.safe_load(v)
    return out


def cmd_export(args: argparse.Namespace) -> int:
    """A run -> a dataset; its input errors are one line here (exit 2), whatever main catches."""
    from pipeline.export import ExportError, export_dataset
    from stages.export.select import FilterError
    from stages.export.splat_transform import SplatToolError

    try:
        summary = export_dataset(
            args.run, args.out, where=args.where, views=args.views, resolution=args.resolution,
            formats=args.formats, shard_size=args.shard_size, random_views=args.random_views,
            shard_bytes=args.shard_bytes,
            seed=args.seed, executor=args.executor, address=args.address,
            num_workers=args.num_workers, backend=args.backend,
            mesh=_mesh_options(args.mesh))
    except (ExportError, FilterError, SplatToolError) as e:
        print(f"sctd3d export: error: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    print(summary.where())
    if getattr(summary, "removed", 0):
        print(f"removed: {summary.removed} asset folder(s) of an earlier export no longer selected")
    if summary.exported == 0:
        print(f"sctd3d export: error: none of the {summary.selected} selected assets could be "
              f"exported; see {summary.out.rstrip('/')}/skipped.json", file=sys.stderr)
        return 1
    return 0


def cmd_toy_list(args: argparse.Namespace) -> int:
    from stages.toyworld.catalogue import format_catalogue, load_catalogue

    if args.prompts_only:  # a prompt file for `sctd3d run` (e.g. the nightly toy run)
        print("\n".join(load_catalogue(args.catalogue or None).prompts()))
    else:
        print(format_catalogue(args.catalogue or None))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from common.config import config_hash, eval_hash
    from pipeline.inputs import asset_generation_hash

    cfg = _cfg(args)
    print(dump_yaml(cfg), end="")
    print(f"# config_hash: {config_hash(cfg)}")
    print(f"# generation_hash: {asset_generation_hash(cfg)}  (asset ids: prompt + seed + this)")
    print(f"# eval_hash: {eval_hash(cfg)}  (evaluation settings; sctd3d evaluate re-scores on change)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sctd3d", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks)")
    ap.add_argument("--version", action=_VersionAction, help="print the package and code version")
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
    p.add_argument("--executor", default=None,
                   help="same as --set pipeline.executor=... (local, ray, or a plugin's executor)")
    p.add_argument("--address", default=None, help="Ray address (e.g. auto) for an existing cluster")
    p.add_argument("--num-workers", type=int, default=None, help="same as --set pipeline.num_workers=N")
    p.add_argument("--redo", choices=("failed", "missing", "all"), default="failed",
                   help="which committed assets run again: failed (default: failed ones and done ones "
                        "whose files are gone), missing (only done ones whose files are gone, not "
                        "failed ones), all (every asset; generation resumes from its checkpoints)")
    p.add_argument("--mesh", default=None, metavar="FORMATS",
                   help="also write each asset's mesh into its folder: glb, obj or glb,obj (same as "
                        "--set pipeline.mesh=...; options: --set pipeline.mesh_options=...)")
    _add_storage_option_arg(p)
    _add_config_args(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="the embedded demo: toy prompts through Ray on local CPUs")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--num-workers", type=int, default=None, help="Ray CPU workers (default: cores)")
    p.add_argument("--prompts", type=int, default=4, help="how many toy prompts (>= 1)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("evaluate", help="re-score existing assets under new evaluation settings, never "
                                        "regenerating (asset dir or run)")
    p.add_argument("target")
    p.add_argument("--executor", default=None,
                   help="where assets are re-scored: local, ray, or a plugin's (same as --set pipeline.executor=...)")
    p.add_argument("--address", default=None, help="Ray address (e.g. auto) for an existing cluster")
    p.add_argument("--num-workers", type=int, default=None, help="same as --set pipeline.num_workers=N")
    _add_config_args(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("report", help="static HTML quality report + regression decision (exit 1 on regression)")
    try:
        from stages.report import add_arguments as add_report_arguments
    except ImportError as e:  # a generation-only install (the GPU check carries no pandas/pyarrow)
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(fn=lambda _a, e=e: _missing_dependency("report", e))
    else:
        add_report_arguments(p)
        _add_storage_option_arg(p)
        p.set_defaults(fn=cmd_report)

    p = sub.add_parser("manifest", help="manifest tools")
    p.add_argument("action", choices=("compact", "show"))
    p.add_argument("uri", help="run output root")
    _add_storage_option_arg(p)
    p.set_defaults(fn=cmd_manifest)

    p = sub.add_parser("export", help="a run -> a training-ready dataset (renders, poses, splats, "
                                      "index, WebDataset shards, dataset card)")
    p.add_argument("run", metavar="RUN_URI", help="output root of a `sctd3d run`")
    p.add_argument("--out", required=True, metavar="DATASET_URI", help="dataset root (path or fsspec URL)")
    p.add_argument("--where", default=None,
                   help="SQL filter on manifest columns, e.g. \"status = 'done' AND clip_l >= 0.28\" "
                        "(default: status = 'done')")
    p.add_argument("--views", type=int, default=None,
                   help="evaluation-orbit views per asset (default: 120 on GPU, 24 on CPU)")
    p.add_argument("--resolution", type=int, default=None,
                   help="square render size in pixels (default: 512 on GPU, 256 on CPU)")
    p.add_argument("--formats", default=None,
                   help="splat formats, comma-separated (default ply,spz): ply, spz, splat, sog, "
                        "html, glb (textured mesh), or one a plugin registers ($SCTD3D_PLUGINS; README 'Export formats')")
    p.add_argument("--shard-size", type=int, default=0,
                   help="at most N assets per WebDataset shard (default 0: no count limit)")
    p.add_argument("--shard-bytes", type=_byte_size, default="1GB",
                   help="WebDataset shard size target, e.g. 500MB, 1GB (default 1GB)")
    p.add_argument("--random-views", type=int, default=0,
                   help="extra views from the run's training camera distribution")
    p.add_argument("--seed", type=int, default=0, help="seed of the random views")
    p.add_argument("--executor", default="local", help="local, ray, or a plugin's executor")
    p.add_argument("--address", default=None, help="Ray address (e.g. auto) for an existing cluster")
    p.add_argument("--num-workers", type=int, default=None, help="Ray workers (default: all CPUs/GPUs)")
    p.add_argument("--backend", choices=("auto", "torch", "gsplat"), default=None,
                   help="renderer (default: the run's render.backend)")
    p.add_argument("--mesh", action="append", default=[], metavar="KEY=VALUE",
                   help="mesh option of the glb/obj formats (common.config.MeshConfig), e.g. "
                        "resolution=128 faces=100000 texture=1024 threshold=1.0 (README 'Meshes')")
    p.set_defaults(fn=cmd_export)

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


class _VersionAction(argparse.Action):
    """`--version`: computed only when asked (the code version may run git)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        from stages.provenance import code_version
        try:
            pkg = version("sctd3d")
        except PackageNotFoundError:
            pkg = "not installed"
        print(f"sctd3d {pkg} (code {code_version()})")
        parser.exit(0)


def _error(prog: str, e: BaseException, verbose: bool) -> None:
    """One line on stderr (the traceback only with -v)."""
    if verbose:
        log.debug("traceback", exc_info=e)
    msg = " ".join(str(e).split()) if str(e).strip() else type(e).__name__
    print(f"{prog}: error: {msg}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["toy", "train-prior"]:
        # its own parser owns every option, --help included (argparse's REMAINDER cannot take them)
        from stages.toyworld.prior_training import main as train_main

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        sys.exit(int(train_main(argv[2:]) or 0))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(guarded(f"sctd3d {args.command}", lambda: args.fn(args), args.verbose))


def guarded(prog: str, fn, verbose: bool = False) -> int:
    """`fn()`'s exit code, or 2 with one line `<prog>: error: ...` for a user-facing error, or 130
    for a Ctrl-C outside a run's own signal handling (loading, reading inputs). Shared by
    scripts/ray_entry.py so every entry point answers alike."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except ConfigError as e:
        _error(prog, e, verbose)
        return 2
    except _user_errors() as e:
        # errors whose message already says what is wrong and what to do: no traceback
        _error(prog, e, verbose)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that carry a user-facing message: every `common.errors.UserError` (each
    module's and each plugin's error subclasses it: no list to keep here), `kernels.ply`'s
    PlyFormatError (kernels/ cannot import common/) and OSError (a path the user named)."""
    from kernels.ply import PlyFormatError

    return (UserError, PlyFormatError, OSError)


if __name__ == "__main__":
    main()
