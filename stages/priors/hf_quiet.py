"""Keep Hugging Face libraries off stderr.

transformers 5 writes a "Loading weights" progress bar for every model it loads and advisory
warnings while prompts are counted ("Token indices sequence length is longer than ..." for a prompt
over the limit, which the run rejects with its own reason); diffusers writes its own bars. stderr is
for sctd3d's log and its one-line errors, so every place that loads a tokenizer or model calls
`quiet()` first. With `-v` (the root logger at DEBUG) the libraries keep their output.
"""

from __future__ import annotations

import importlib
import logging
import os


def quiet() -> None:
    """Silence transformers' and diffusers' warnings and progress bars (idempotent, cheap)."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for lib in ("transformers", "diffusers"):
        try:
            lg = importlib.import_module(f"{lib}.utils.logging")
        except ImportError:  # a generation-only install may lack one of them
            continue
        lg.set_verbosity_error()
        lg.disable_progress_bar()
