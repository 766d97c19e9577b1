"""Optuna's grid sampler as Ray Tune drives it (ask and tell, trials running concurrently).

Its own module: Tune pickles the searcher, sampler included, into the experiment state, so the
class must be importable by name when a sweep is resumed.
"""

from __future__ import annotations

from typing import Any

import optuna


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Trial ``i`` of the study takes grid cell ``i`` (Optuna assigns the first ``n`` trials in
    order, so concurrent asks never share a cell). Optuna's own ``after_trial`` calls
    ``study.stop()``, which raises outside ``study.optimize``; Tune stops after ``num_samples``
    (the grid's size) instead."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        pass
