"""2D diffusion priors behind one interface: Stable Diffusion, toy SD, toy exact.

protocol (the `Prior` interface, embedding cache), views (front / side / back prompt words),
guidance (CFG / Perp-Neg over one batched prediction), device (where a prior runs), registry
(name -> loader, `load_prior`), stable_diffusion, toy_exact, identity (what names a prior's
weights), sampling (DDIM sampling from a prior).
"""
