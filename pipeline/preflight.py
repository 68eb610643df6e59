"""Checks that run before any work: problems found here would otherwise surface only after a whole
generation (an unwritable cache) or would make a read-only command write (a mistyped run path).
Each raises a user-facing error whose one line names the value and what to do."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from common.config import Config
from common.storage import StorageError, is_local

log = logging.getLogger(__name__)

CACHE_ENV = "SCTD3D_CACHE"


def uses_cache(cfg: Config) -> bool:
    """Whether this config reads or writes the on-disk cache (toy views and ground truth, Point-E)."""
    toy_metrics = {"toy_psnr", "toy_rprec"} & set(cfg.metrics.metrics)
    from stages.priors.registry import PRIORS

    prior = PRIORS.get(cfg.prior.name, None)
    return (bool(prior and prior.uses_toy_cache) or cfg.init.method in ("point_e", "toy_shape")
            or bool(toy_metrics and cfg.pipeline.score) or cfg.metrics.fid_reference == "toy")


def cache_dir(cfg: Config) -> tuple[Path, str]:
    """(the cache folder, where that folder came from) as the stages resolve it."""
    if cfg.toy.cache_dir:
        return Path(cfg.toy.cache_dir).expanduser(), "toy.cache_dir"
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser(), f"${CACHE_ENV}"
    return Path.home() / ".cache" / "sctd3d", f"the default (set ${CACHE_ENV} to change it)"


def check_cache_dir(cfg: Config) -> None:
    """Create the cache folder and write one temp file there, or raise StorageError naming the
    variable that chose it."""
    if not uses_cache(cfg):
        return
    path, source = cache_dir(cfg)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tmp-probe-"):
            pass
    except OSError as e:
        raise StorageError(f"cache folder {str(path)!r} (from {source}) is not writable: "
                           f"{e.strerror or e}; set {CACHE_ENV} (or toy.cache_dir) to a writable "
                           f"folder") from None


def check_is_run(uri: str) -> None:
    """`uri` is an existing run output root (it holds manifest/ or run.json); never creates it."""
    import fsspec

    if is_local(uri):
        p = Path(uri.split("://", 1)[-1]).expanduser()
        if not p.exists():
            raise StorageError(f"{uri}: no such run folder; give the --out of a `sctd3d run`")
        if not p.is_dir():
            raise StorageError(f"{uri}: is a file, not a run folder; give the --out of a `sctd3d run`")
        if not ((p / "manifest").is_dir() or (p / "run.json").is_file()):
            raise StorageError(f"{uri}: not a run folder (no manifest/ or run.json); give the --out "
                               f"of a `sctd3d run`")
        return
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        found = fs.exists(root.rstrip("/") + "/run.json") or fs.exists(root.rstrip("/") + "/manifest")
    except (ImportError, ValueError) as e:
        raise StorageError(f"cannot open {uri!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a client error (endpoint, credentials): one line
        raise StorageError(f"cannot use {uri}: {_first_line(e)}; {STORE_HINT}") from None
    if not found:
        raise StorageError(f"{uri}: not a run (no manifest/ or run.json there); give the --out of a "
                           f"`sctd3d run`")


def check_prompts_file(uri: str) -> None:
    """A local prompt file exists, is a file, and a `.parquet` one is Parquet (its magic bytes):
    refused before the run takes the lock or writes anything. Remote files are read as usual."""
    from pipeline.inputs import InputError, not_found_error

    if not is_local(uri):
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(uri)
            info = fs.info(path)
        except FileNotFoundError as e:  # fsspec's HTTP client says this for a refused connection too
            raise not_found_error(uri, e) from None
        except (ImportError, ValueError) as e:
            raise StorageError(f"cannot open the prompt file {uri!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a client error (endpoint, credentials): one line
            raise StorageError(f"cannot read the prompt file {uri}: {_first_line(e)}; "
                               f"{STORE_HINT}") from None
        if info.get("type") == "directory":
            raise InputError(f"prompt file {uri!r} is a directory; give a .txt, .jsonl or .parquet "
                             f"file")
        return
    p = Path(uri.split("://", 1)[-1]).expanduser()
    if not p.exists():
        raise InputError(f"prompt file not found: {uri!r}")
    if p.is_dir():
        raise InputError(f"prompt file {uri!r} is a directory; give a .txt, .jsonl or .parquet file")
    if p.suffix.lower() == ".parquet":
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(4)
            f.seek(max(0, size - 4))
            tail = f.read(4)
        if size < 12 or head != b"PAR1" or tail != b"PAR1":
            raise InputError(f"prompt file {uri!r} is not a Parquet file (no Parquet magic bytes); "
                             f"write it with pandas.to_parquet / pyarrow, or use .txt / .jsonl")


STORE_HINT = ("check the endpoint (AWS_ENDPOINT_URL, or --storage-option endpoint_url=URL) and the "
              "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
              "--storage-option profile=NAME)")


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:400]


def check_store(st) -> None:
    """An object-store output root answers a listing with these credentials (one round trip).

    Why: an unreachable endpoint or missing credentials otherwise surface as a client library's
    traceback from deep inside the lock (botocore's errors are not OSErrors)."""
    if st.local:
        return
    try:
        st.fs.ls(st.root_path, detail=False)
    except FileNotFoundError:
        return  # a new run folder: fine
    except Exception as e:  # noqa: BLE001 - any client error: one line naming the store
        raise StorageError(f"cannot use the output store {st.root}: {_first_line(e)}; "
                           f"{STORE_HINT}") from None
