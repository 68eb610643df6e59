"""The toy world: a catalogue of simple objects, their rendered views, and the shipped toy SDs
(`toy_sd/` latent, `toy_sd_pixel/` pixel space) trained on them. It sits below stages.priors
(toy_exact and the toy SD loaders read it) and imports none of the priors."""

from pathlib import Path as _Path

TOY_SD_DIR = _Path(__file__).resolve().parent / "toy_sd"              # latent toy SD: VAE + UNet
TOY_SD_PIXEL_DIR = _Path(__file__).resolve().parent / "toy_sd_pixel"  # pixel-space toy SD: no VAE
