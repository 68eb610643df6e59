"""A prior's prompt-token counter and limit, and whether it sees letter case, from its tokenizer
alone (no UNet or text encoder).

Why here: the prompt-length check (pipeline.inputs) needs the tokenizer the prior will use, and
only the prior's own code knows where that lives. Stable Diffusion priors (and the toy SD, which
uses the same CLIP tokenizer format) have a `tokenizer/` folder; toy_exact has no tokenizer: it
looks a prompt up in the toy catalogue by its catalogue key.

Case: "a red cube" and "A Red Cube" are one asset when the prior cannot tell them apart. That is
asked of the tokenizer itself (`lowercases`: does it split a mixed-case probe exactly as the
probe's lowercase?), not of a list of prior names: CLIP's BPE tokenizer lowercases (OpenAI CLIP,
SD 1.x, and SD 2.x's OpenCLIP vocabulary: tests/test_prompt_case.py checks SD 2.1's vocabulary
with both open_clip's and transformers' tokenizer); a cased tokenizer keeps case-only variants
apart. Only local files decide it (a local directory or the Hugging Face cache, never the
network), so the same machine state always gives the same asset ids; when no tokenizer is readable
here the answer is "case matters" (variants stay separate assets: nothing is merged on a guess).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from common.config import PriorConfig

log = logging.getLogger(__name__)

TokenCounter = Callable[[str], int]
TOKENIZED_PRIORS = ("stable_diffusion", "toy_sd")
CATALOGUE_PRIORS = ("toy_exact",)  # a prompt is its toy catalogue key (stages.toyworld.catalogue)
# mixed-case letters of several scripts; a tokenizer that splits it exactly as its lowercase ignores case
CASE_PROBE = "A Red Cube, a BLUE sphere: Ärger Élan ÑANDÚ ΣΟΦΙΑ ДОМ"


def lowercases(split: Callable[[str], Any]) -> bool:
    """Whether a tokenizer (its `tokenize`/`split` function) ignores letter case."""
    return split(CASE_PROBE) == split(CASE_PROBE.lower())


def _tokenizer_dir(name: str, model: str) -> Optional[str]:
    """The local folder holding the prior's `tokenizer/`, or None (single file, missing folder,
    hub id: the caller decides what a hub id means)."""
    from stages.priors.stable_diffusion import toy_sd_model

    model = toy_sd_model(model) if name == "toy_sd" else model
    local = Path(model).expanduser()
    return str(local) if (local / "tokenizer").is_dir() else None


@functools.lru_cache(maxsize=16)
def _lowercased(name: str, model: str, revision: str) -> bool:
    if name in CATALOGUE_PRIORS:
        from stages.toyworld.catalogue import prompt_key

        return lowercases(prompt_key)
    if name not in TOKENIZED_PRIORS:
        return False
    try:
        folder = _tokenizer_dir(name, model)
    except ValueError:  # an unknown toy SD name: the run's config check names it
        return False
    local = Path(model).expanduser()
    if folder is None and (local.exists() or name != "stable_diffusion"):
        return False  # a single file or a folder without tokenizer/: case kept
    if folder is None:  # a hub id: its tokenizer from the local Hugging Face cache, if there
        from huggingface_hub import try_to_load_from_cache

        try:
            hit = try_to_load_from_cache(model, "tokenizer/vocab.json", revision=revision or None)
        except ValueError:  # an id or revision the hub client refuses: the loader names it
            hit = None
        if not isinstance(hit, str):
            log.info("prompt case kept: the tokenizer of %s is not in the local cache", model)
            return False
        folder = str(Path(hit).parent.parent)
    from transformers import CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError, TypeError) as e:  # unreadable tokenizer files
        log.warning("prompt case kept: cannot read the tokenizer of %s (%s)", model,
                    (str(e).splitlines()[0] if str(e) else type(e).__name__)[:120])
        return False
    return lowercases(tok.tokenize)


def prompt_lowercased(prior: "PriorConfig") -> bool:
    """Whether `prior` sees a prompt and its lowercase as the same text (so they are one asset)."""
    return _lowercased(prior.name, prior.model, prior.revision)


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
