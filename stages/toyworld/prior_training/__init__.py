"""Offline training of the shipped toy SD priors (`sctd3d toy train-prior`); not part of a run.

Why a package of its own: these recipes produce the weights the package ships
(`stages/toyworld/toy_sd`, latent, the default; `toy_sd_pixel`, pixel space); a run only loads
them (`stages.priors.stable_diffusion`). `latent` trains a small VAE then the latent UNet,
`pixel` the pixel-space UNet, both through `common.fit_unet`.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """`sctd3d toy train-prior [--recipe latent|pixel] ...`: latent (the shipped toy SD) by default."""
    from stages.toyworld.prior_training import latent, pixel
    from stages.toyworld.prior_training.common import resolve_out_dir

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=("latent", "pixel"), default="latent")
    pre.add_argument("--out", default=None)
    pre.add_argument("--force-package", action="store_true")
    r, rest = pre.parse_known_args(argv)
    if not any(a in ("-h", "--help") for a in rest):
        out = resolve_out_dir(r.out, r.recipe, r.force_package)
        if isinstance(out, str):  # an error message
            print(f"sctd3d toy train-prior: error: {out}", file=sys.stderr)
            return 2
        rest = ["--out", str(out)] + (["--force-package"] if r.force_package else []) + rest
    return (latent if r.recipe == "latent" else pixel).main(rest)
