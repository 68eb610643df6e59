"""A prior's prompt-token counter and limit, from its tokenizer alone (no UNet or text encoder).

Why here: the prompt-length check (pipeline.inputs) needs the tokenizer the prior will use, and
only the prior's own code knows where that lives. Stable Diffusion priors (and the toy SD, which
uses the same CLIP tokenizer format) have a `tokenizer/` folder; toy_exact has no tokenizer.
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
TOKENIZED_PRIORS = ("stable_diffusion", "toy_sd")


def token_limit(prior: "PriorConfig") -> tuple[Optional[TokenCounter], Optional[int]]:
    """(count_tokens, max_tokens) for `prior`, or (None, None) when it has no readable tokenizer.

    When the tokenizer cannot be read here (e.g. a hub id not cached on the driver), prompts are
    still checked against the character cap and the prior's own truncation warning applies; the
    reason is logged."""
    if prior.name not in TOKENIZED_PRIORS:
        return None, None
    from stages.priors.stable_diffusion import toy_sd_model

    model = toy_sd_model(prior.model) if prior.name == "toy_sd" else prior.model
    local = Path(model).expanduser()
    if local.is_file():
        log.warning("token-limit check skipped: prior.model %s is a single file", model)
        return None, None
    if prior.name == "toy_sd" and not local.is_dir():
        log.warning("token-limit check skipped: the toy SD directory %s does not exist", model)
        return None, None
    if local.is_dir() and not (local / "tokenizer").is_dir():
        log.warning("token-limit check skipped: %s has no tokenizer/ folder", model)
        return None, None
    from transformers import CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained(str(local) if local.is_dir() else model,
                                            subfolder="tokenizer",
                                            revision=None if local.is_dir() else (prior.revision or None),
                                            local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as e:
        log.warning("token-limit check skipped: cannot read the tokenizer of %s (%s)", model,
                    (str(e).splitlines()[0] if str(e) else type(e).__name__)[:120])
        return None, None
    return (lambda p: len(tok(p, truncation=False).input_ids)), int(tok.model_max_length)
