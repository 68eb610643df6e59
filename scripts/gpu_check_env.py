#!/usr/bin/env python
"""Step 0 of the GPU check (benchmarks/gpu_check.sh) on a machine with its own torch and
transformers and no network: install, from the carried wheels (scripts/gpu_check_wheels.sh), only
what generation needs and the machine lacks, into a private folder; never touch the machine's
packages. Prints what it found and did to stderr, and to stdout the shell lines to use the folder:

    eval "$(python scripts/gpu_check_env.py --wheels gpu_check_wheels --target OUT/site)"

What "needs" means: the distributions in NEEDS at the versions given. An installed one that fits
is used as it is; otherwise the newest carried wheel whose own requirements (extras aside) the
machine's packages or other carried wheels satisfy is installed (diffusers 0.42.1 needs
huggingface-hub >= 1.32; with an older hub the carried 0.39.0 is taken). Exit 1 with one line per
requirement that cannot be met (e.g. torch or transformers missing: those are the machine's).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.specifiers import SpecifierSet
from packaging.version import Version

# what `sctd3d generate` and benchmarks/bench_generate.py import, beyond the standard library
NEEDS = ["torch>=2.4", "transformers>=4.40", "numpy", "pyyaml", "pillow", "diffusers>=0.39,<0.43",
         "gsplat==1.5.3", "plyfile>=1.0", "imageio>=2.34", "ninja", "pytest>=7"]
MACHINE_ONLY = {"torch", "transformers"}
PYTHON = Version(".".join(map(str, sys.version_info[:3])))
SUPPORTED_TAGS = frozenset(sys_tags())  # never installed from wheels: the machine's own


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def installed(name: str) -> Version | None:
    try:
        return Version(metadata.version(name))
    except (metadata.PackageNotFoundError, ValueError):
        return None


class Wheel:
    def __init__(self, path: Path):
        self.path = path
        with zipfile.ZipFile(path) as z:
            meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            msg = Parser().parsestr(z.read(meta_name).decode("utf-8"))
        self.name = canonicalize_name(msg["Name"])
        self.version = Version(msg["Version"])
        self.requires = [Requirement(r) for r in (msg.get_all("Requires-Dist") or [])]
        self.requires_python = SpecifierSet(msg.get("Requires-Python") or "")
        self.fits_platform = bool(parse_wheel_filename(path.name)[3] & SUPPORTED_TAGS)

    def runtime_requires(self) -> list[Requirement]:
        env = {"extra": ""}
        return [r for r in self.requires if r.marker is None or r.marker.evaluate(env)]


def plan(needs: list[str], wheels: list[Wheel]) -> tuple[list[Wheel], list[str]]:
    """(wheels to install, unmet requirement lines)."""
    chosen: dict[str, Wheel] = {}
    unmet: list[str] = []
    why: dict[str, list[str]] = {}  # need -> why each carried candidate did not fit

    def satisfy(req: Requirement, stack: tuple[str, ...]) -> bool:
        name = canonicalize_name(req.name)
        if name in chosen:
            return chosen[name].version in req.specifier
        have = installed(name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            return True
        if name in MACHINE_ONLY or name in stack:
            return False
        for w in sorted((w for w in wheels if w.name == name), key=lambda w: w.version, reverse=True):
            if w.version not in req.specifier:
                continue
            if not w.fits_platform:  # e.g. Pillow built for another Python
                continue
            if PYTHON not in w.requires_python:
                why.setdefault(name, []).append(f"{w.name} {w.version} needs Python {w.requires_python}")
                continue
            chosen[name] = w
            bad = next((r for r in w.runtime_requires() if not satisfy(r, stack + (name,))), None)
            if bad is None:
                return True
            del chosen[name]
            have = installed(bad.name)
            why.setdefault(name, []).append(f"{w.name} {w.version} needs {bad} "
                                            f"({'installed ' + str(have) if have else 'not installed'})")
        return False

    for line in needs:
        req = Requirement(line)
        if not satisfy(req, ()):
            have = installed(req.name)
            reasons = "; ".join(r for rs in why.values() for r in rs) or "none carried"
            why.clear()
            unmet.append(f"{line}: {'installed ' + str(have) if have else 'not installed'}, and no carried "
                         f"wheel fits the machine's packages ({reasons})")
    return list(chosen.values()), unmet


def install(ws: list[Wheel], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if not ws:
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
           *[str(w.path) for w in ws]]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"pip could not install the carried wheels into {target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, required=True, help="folder of carried wheels")
    ap.add_argument("--target", type=Path, required=True, help="private folder to install into")
    ap.add_argument("--need", action="append", metavar="REQUIREMENT",
                    help="a requirement to satisfy, repeatable; replaces the default list (NEEDS: what "
                         "generation needs)")
    args = ap.parse_args(argv)
    needs = args.need or NEEDS
    wheels = [Wheel(p) for p in sorted(args.wheels.glob("*.whl"))] if args.wheels.is_dir() else []
    log(f"python {sys.version.split()[0]}; " + ", ".join(
        f"{n} {installed(n) or '-'}" for n in ("torch", "transformers", "huggingface-hub", "safetensors",
                                              "tokenizers", "diffusers")))
    todo, unmet = plan(needs, wheels)
    for line in unmet:
        log(f"UNMET {line}")
    if unmet:
        return 1
    install(todo, args.target)
    log("installed from wheels: " + (", ".join(f"{w.name} {w.version}" for w in todo) or "nothing (all present)"))
    bin_dir = args.target / "bin"
    print(f"export PYTHONPATH={shlex.quote(str(args.target.resolve()))}${{PYTHONPATH:+:$PYTHONPATH}}")
    if bin_dir.is_dir():
        print(f"export PATH={shlex.quote(str(bin_dir.resolve()))}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
