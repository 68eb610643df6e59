"""2D diffusion priors behind one interface (`base.Prior`): Stable Diffusion, toy SD, toy exact."""

from stages.priors.base import (
    PerpNegParams,
    Prior,
    load_prior,
    make_guided_eps,
    make_guided_eps_from_config,
    view_suffix,
)

__all__ = ["PerpNegParams", "Prior", "load_prior", "make_guided_eps", "make_guided_eps_from_config", "view_suffix"]
