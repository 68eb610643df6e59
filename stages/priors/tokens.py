"""Tokenizer facts a run needs before any model loads: a prior's prompt-token counter and limit, and
whether it sees letter case, from its tokenizer files alone (no UNet or text encoder).

Why here: the prompt-length check and the prompt's identity text (pipeline.inputs) need the
tokenizer the prior will use, and only the prior's own spec knows where that lives
(`PriorSpec.token_limit` / `PriorSpec.lowercases`, asked by `stages.priors.registry.token_limit` /
`prompt_lowercased`). The Stable Diffusion priors (and the toy SD, same CLIP tokenizer format) use
`clip_token_limit` / `clip_lowercases` on their `tokenizer/` folder; toy_exact has no tokenizer: it
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
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

TokenCounter = Callable[[str], int]
# mixed-case letters of several scripts; a tokenizer that splits it exactly as its lowercase ignores case
CASE_PROBE = "A Red Cube, a BLUE sphere: Ärger Élan ÑANDÚ ΣΟΦΙΑ ДОМ"


def lowercases(split: Callable[[str], Any]) -> bool:
    """Whether a tokenizer (its `tokenize`/`split` function) ignores letter case."""
    return split(CASE_PROBE) == split(CASE_PROBE.lower())


@functools.lru_cache(maxsize=16)
def _lowercased(model: str, revision: str, must_exist: bool) -> bool:
    local = Path(model).expanduser()
    folder = str(local) if (local / "tokenizer").is_dir() else None
    if folder is None and (local.exists() or must_exist):
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
    from stages.priors.hf_quiet import quiet
    quiet()  # no library progress bars / advisories on stderr (stages/priors/hf_quiet.py)

    try:
        tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError, TypeError) as e:  # unreadable tokenizer files
        log.warning("prompt case kept: cannot read the tokenizer of %s (%s)", model,
                    (str(e).splitlines()[0] if str(e) else type(e).__name__)[:120])
        return False
    return lowercases(tok.tokenize)


def clip_lowercases(model: str, revision: str = "", must_exist: bool = False) -> bool:
    """Whether the CLIP tokenizer of a diffusers model (directory with `tokenizer/`, or a hub id in
    the local cache) ignores case; False when it cannot be read here. `must_exist`: `model` is a
    local directory (a hub id is not tried). Cached per process."""
    return _lowercased(model, revision, must_exist)


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
    from stages.priors.hf_quiet import quiet
    quiet()  # no library progress bars / advisories on stderr (stages/priors/hf_quiet.py)

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
