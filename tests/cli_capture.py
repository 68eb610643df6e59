"""Run `sctd3d` in-process and capture what a user would see: exit code, stdout, stderr."""

from __future__ import annotations

import contextlib
import io

import pytest

from pipeline.cli import main as cli_main


def run_cli(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `sctd3d ARGV...`; the command must exit via SystemExit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as e:
            cli_main(list(argv))
    return int(e.value.code), out.getvalue(), err.getvalue()
