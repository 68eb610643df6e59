"""Where the prior runs, decided once, before the first asset, and loudly when it cannot be a GPU.

Why: `prior.device: auto` used to fall back to the CPU with an INFO line. With the pinned torch (a
CUDA 13 build) on a GPU node whose NVIDIA driver is too old for it, CUDA is unusable and every asset
would then run Stable Diffusion at 512 px on the CPU until its timeout. So a real prior
(its spec says `needs_gpu`: `stable_diffusion`) needs CUDA unless the config says otherwise:
`prior.allow_cpu: true`, or `prior.device: cpu`. The toy priors (`toy_sd`, `toy_exact`) run anywhere.

With the Ray executor this check runs in each GPU actor when it starts, never on the driver: a
cluster's head node has no GPU by design and must still be able to drive a GPU run.
"""

from __future__ import annotations

from common.errors import UserError
import logging
import shutil
import socket
import subprocess
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from common.config import PriorConfig

log = logging.getLogger(__name__)



class DeviceError(UserError, RuntimeError):
    """The configured prior cannot get the device it needs here (one line: build, driver, key)."""


def driver_version() -> str:
    """What `nvidia-smi` says about the NVIDIA driver: 'NVIDIA driver 580.65.06', 'no GPU (...)' or
    'no NVIDIA driver (nvidia-smi not found)'."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "no NVIDIA driver (nvidia-smi not found)"
    try:
        res = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no usable NVIDIA driver (nvidia-smi failed: {type(e).__name__})"
    versions = sorted({ln.strip() for ln in res.stdout.splitlines() if ln.strip()})
    if res.returncode != 0 or not versions:
        said = (res.stderr or res.stdout).strip().splitlines()
        return f"no GPU (nvidia-smi: {said[0][:120]})" if said else "no GPU (nvidia-smi lists none)"
    return "NVIDIA driver " + ", ".join(versions)


def cuda_build() -> str:
    """The CUDA version torch was built for, or a note that it is a CPU-only build."""
    return f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"


def cuda_status() -> str:
    """'torch 2.x built for CUDA 13.0, NVIDIA driver 575.51 on host' -- the facts a fix needs."""
    return f"torch {torch.__version__} built for {cuda_build()}, {driver_version()} on {socket.gethostname()}"


def resolve_device(cfg: "PriorConfig", device: str | torch.device | None = None,
                   needs_gpu: bool = False) -> torch.device:
    """The device the prior described by `cfg` runs on; raises DeviceError instead of falling back.

    `device` overrides `cfg.device` (e.g. an explicit "cpu" from a benchmark). 'auto' = CUDA when
    usable; else the CPU, unless `needs_gpu` (the prior's spec: stages.priors.registry.require_device)
    and not `prior.allow_cpu: true`: then an error.
    """
    want = str(device) if device is not None else (cfg.device or "auto")
    if want == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if needs_gpu and not getattr(cfg, "allow_cpu", False):
            raise DeviceError(
                f"prior {cfg.name!r} needs a CUDA GPU and none is usable here ({cuda_status()}); "
                f"prior.device=auto does not fall back to the CPU for a real prior: run on a node "
                f"whose driver supports torch's {cuda_build()}, or set prior.allow_cpu=true "
                f"(or prior.device=cpu) to run on the CPU, very slowly")
        log.info("prior %s on the CPU (no CUDA here: %s)", cfg.name, cuda_build())
        return torch.device("cpu")
    dev = torch.device(want)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"prior.device={want} but no CUDA GPU is usable here ({cuda_status()}); "
                              f"run on a node whose driver supports torch's {cuda_build()}, or set "
                              f"prior.device=cpu (slow)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"prior.device={want} but this node has {torch.cuda.device_count()} "
                              f"visible GPU(s) ({cuda_status()}); use cuda or cuda:0")
    return dev
