"""Checkpoints of one asset's generation: what they hold, how they are written and read back.

A checkpoint is `ckpt_{iteration:07d}.safetensors` (every tensor of the run's state) plus a
`.json` beside it (iteration, retry state, loss history, the run's identity). The json is renamed
into place last, so it is the commit marker: a checkpoint without its json is ignored. Files are
only ever read as safetensors (never unpickled); the newest readable pair whose identity matches
the run resumes it, and the same state on CPU continues bit for bit.
"""

from __future__ import annotations

from common.errors import UserError
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from common.storage import atomic_path

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that is not what sctd3d writes (e.g. a pickle): refused, never loaded."""


def _flatten(d: dict, prefix: str = "") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, Tensor):
            out[key] = v.detach().cpu().contiguous()
        else:
            raise TypeError(f"checkpoint: {key} is a {type(v).__name__}, not a tensor")
    return out


def _unflatten(flat: dict[str, Tensor]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


@dataclass
class RunState:
    """Everything that determines the rest of a run (what a checkpoint holds)."""

    iteration: int
    trainer: dict           # GaussianTrainer.state_dict()
    gen: Tensor             # state of the host generator of cameras, flags, timesteps
    gen_noise: Tensor       # state of the noise generator (VAE sampling, SDS noise)
    method_state: dict[str, Tensor]  # the method's per-asset state (MethodState.state_dict: eps_star, buffers)
    attempt: int            # NaN retries so far
    noise_seed: int
    history: list[dict[str, float]]
    unet_calls: int
    elapsed_s: float

    @property
    def eps_star(self) -> Tensor | None:
        """The fixed noise of the fixed-noise methods (in the method's state), or None."""
        return self.method_state.get("eps_star")

    def tensors(self) -> dict[str, Tensor]:
        d = {"trainer": self.trainer, "gen": self.gen, "gen_noise": self.gen_noise}
        if self.method_state:
            d["method"] = dict(self.method_state)   # "method/<name>" in the file
        return _flatten(d)

    def info(self) -> dict:
        return {"iteration": self.iteration, "attempt": self.attempt, "noise_seed": self.noise_seed,
                "history": self.history, "unet_calls": self.unet_calls, "elapsed_s": self.elapsed_s}


def save_checkpoint(ckdir: Path, st: RunState, ident: dict) -> None:
    """Write `st` as the newest checkpoint of the run `ident`; keep the last KEEP_CHECKPOINTS."""
    from safetensors.torch import save_file

    ckdir.mkdir(parents=True, exist_ok=True)
    stem = ckdir / f"ckpt_{st.iteration:07d}"
    with atomic_path(stem.with_suffix(".json")) as tmp_j:   # the json is the commit marker: last
        with atomic_path(stem.with_suffix(".safetensors")) as tmp_t:
            save_file(st.tensors(), tmp_t)
        Path(tmp_j).write_text(json.dumps({**ident, **st.info()}), encoding="utf-8")
    for old in sorted(ckdir.glob("ckpt_*.json"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
        old.with_suffix(".safetensors").unlink(missing_ok=True)


def load_latest_checkpoint(ckdir: Path, ident: dict) -> RunState | None:
    """The newest readable checkpoint of the run `ident`, or None (none, or another run's).

    Raises CheckpointError for a file that is not safetensors (never unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for js in sorted(ckdir.glob("ckpt_*.json"), reverse=True):
        st_path = js.with_suffix(".safetensors")
        try:
            info = json.loads(js.read_text(encoding="utf-8"))
            flat = load_file(str(st_path))
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable checkpoint %s: %s", js, e)
            continue
        except SafetensorError as e:
            # never fall back to unpickling: a checkpoint must be safetensors
            raise CheckpointError(
                f"{st_path}: not a valid safetensors checkpoint ({e}); checkpoints are only ever "
                f"read as safetensors. Move the checkpoints/ directory aside to start this asset "
                f"fresh.") from None
        mismatch = {k: (info.get(k), v) for k, v in ident.items() if info.get(k) != v}
        if mismatch:
            log.warning("checkpoint %s belongs to another run (%s); starting fresh", js, mismatch)
            return None
        d = _unflatten(flat)
        method = d.get("method", {})
        if "eps_star" in d:   # written before methods owned their state: the fixed noise alone
            method = {"eps_star": d["eps_star"], **method}
        return RunState(iteration=int(info["iteration"]), trainer=d["trainer"], gen=d["gen"],
                        gen_noise=d["gen_noise"], method_state=method, attempt=int(info["attempt"]),
                        noise_seed=int(info["noise_seed"]), history=list(info["history"]),
                        unet_calls=int(info["unet_calls"]), elapsed_s=float(info["elapsed_s"]))
    return None
