"""Shared pieces of the metric modules: the missing-weights error and device choice."""

from __future__ import annotations

from common.errors import UserError
import torch


class MetricWeightsError(UserError, RuntimeError):
    """A metric's model weights cannot be loaded; the message names the metric, the checkpoint,
    the config key for a local path and how to skip the metric instead."""


def metric_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"metrics.device={name!r} is not a torch device ({exc}); use auto, cpu or "
                         f"cuda:N") from None
