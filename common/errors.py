"""The one base of user-facing errors.

A `UserError`'s message already says what is wrong and what to do (the bad value, the key or flag,
the fix), so the CLI prints it as one line `sctd3d <cmd>: error: ...` and exits 2, with no traceback
(`-v` logs it). Every module's error for bad input, a missing dependency or an unusable resource
subclasses it (keeping its old built-in base, e.g. `ValueError`, for callers that catch that); a
plugin's error does the same and gets the same treatment without editing the CLI. `kernels/` cannot
import `common/` (pure tensor code), so `kernels.ply.PlyFormatError` is the one error the CLI names
besides this base.
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is for the user of the command (one line, exit 2)."""
