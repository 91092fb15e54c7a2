"""``wmdd tune``: recipe selection on a validation split held out from the train split
(:mod:`wmdd.tune.space` the search space, :mod:`wmdd.tune.study` the Optuna study,
:mod:`wmdd.tune.preset` the YAML preset it writes, :mod:`wmdd.data.holdout` the split)."""
