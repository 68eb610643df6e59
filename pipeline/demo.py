"""`sctd3d demo`: toy-world prompts through the Ray executor on local CPUs (no GPU, no downloads)."""

from __future__ import annotations

from typing import Optional

from common.config import load_config, resolve_config_path
from pipeline.run import RunSummary, run_batch
from common.storage import open_storage

DEMO_CONFIG = "demo.yaml"


def demo(out: str = "runs/demo", num_workers: Optional[int] = None, n_prompts: int = 4,
         progress: bool = True) -> RunSummary:
    """Run the first `n_prompts` toy-catalogue prompts into `out` as a Ray run on local CPUs.

    Re-running resumes (committed assets are skipped). `summary.where()` says what to look at."""
    from stages.toyworld.catalogue import list_objects

    if n_prompts < 1:
        raise ValueError(f"n_prompts={n_prompts}: must be >= 1")
    cfg = load_config(resolve_config_path(DEMO_CONFIG))
    workers = num_workers or cfg.pipeline.num_workers or 2
    prompts = [o.prompt for o in list_objects()][:n_prompts]
    st = open_storage(out)
    st.write_text("prompts.txt", "\n".join(prompts) + "\n")
    return run_batch(st.uri("prompts.txt"), cfg, out, executor="ray", num_workers=workers,
                     progress=progress,
                     executor_options={"num_cpus": max(workers, 1), "backoff_s": cfg.pipeline.backoff_s})
