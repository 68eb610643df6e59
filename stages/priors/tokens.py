"""A prior's prompt-token counter and limit, from its tokenizer alone (no UNet or text encoder).

Why here: the prompt-length check (pipeline.inputs) needs the tokenizer the prior will use, and
only the prior's own spec knows where that lives (`PriorSpec.token_limit`, asked by
`stages.priors.registry.token_limit`); the Stable Diffusion
priors (and the toy SD, same CLIP tokenizer format) use `clip_token_limit` on their `tokenizer/`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from common.config import PriorConfig

log = logging.getLogger(__name__)

TokenCounter = Callable[[str], int]


def clip_token_limit(model: str, revision: str = "", must_exist: bool = False
                     ) -> tuple[Optional[TokenCounter], Optional[int]]:
    """The CLIP tokenizer of a diffusers model (hub id or directory with `tokenizer/`), as
    (count_tokens, max_tokens); (None, None) with the reason logged when it cannot be read.
    `must_exist`: `model` is a local directory (a hub id is not tried)."""
    local = Path(model).expanduser()
    if local.is_file():
        log.warning("token-limit check skipped: prior.model %s is a single file", model)
        return None, None
    if must_exist and not local.is_dir():
        log.warning("token-limit check skipped: the model directory %s does not exist", model)
        return None, None
    if local.is_dir() and not (local / "tokenizer").is_dir():
        log.warning("token-limit check skipped: %s has no tokenizer/ folder", model)
        return None, None
    from transformers import CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained(str(local) if local.is_dir() else model,
                                            subfolder="tokenizer",
                                            revision=None if local.is_dir() else (revision or None),
                                            local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as e:
        log.warning("token-limit check skipped: cannot read the tokenizer of %s (%s)", model,
                    (str(e).splitlines()[0] if str(e) else type(e).__name__)[:120])
        return None, None
    return (lambda p: len(tok(p, truncation=False).input_ids)), int(tok.model_max_length)
