"""`python -m stages.toyworld.prior_training` = `sctd3d toy train-prior`."""

from stages.toyworld.prior_training import main

raise SystemExit(main())
