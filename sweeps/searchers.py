"""Optuna samplers and Tune schedulers by name: the one list of what ``search.sampler`` and
``scheduler.name`` accept, used by spec validation, the runner and the README's table.

Builders import Optuna and Ray only when called, so validating a spec stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_spaces import grid_space


def _tpe(spec: Any) -> Any:
    import optuna  # at call: spec validation imports this module (see above)

    return optuna.samplers.TPESampler(seed=spec.seed)


def _nsga2(spec: Any) -> Any:
    import optuna  # at call, as in _tpe

    return optuna.samplers.NSGAIISampler(seed=spec.seed)


def _random(spec: Any) -> Any:
    import optuna  # at call, as in _tpe

    return optuna.samplers.RandomSampler(seed=spec.seed)


def _grid(spec: Any) -> Any:
    from sweeps.grid_sampler import AskTellGridSampler  # imports Optuna: at call, as in _tpe

    grid, _ = grid_space(spec.space.name, spec.space.overrides)
    seeds = spec.replicate_seeds()
    if seeds:  # the replicate axis: the space suggests it last (search_spaces.DefineByRun)
        grid["seed"] = seeds
    return AskTellGridSampler(grid, seed=spec.seed)


# name -> builder(spec) of the Optuna sampler
SAMPLERS: dict[str, Callable[[Any], Any]] = {
    "tpe": _tpe,
    "nsga2": _nsga2,
    "random": _random,
    "grid": _grid,
}


def _asha(spec: Any) -> Any:
    from ray.tune.schedulers import ASHAScheduler  # Ray: at call, as Optuna in _tpe

    return ASHAScheduler(
        metric=spec.objective.metrics[0],
        mode=spec.objective.modes()[0],
        time_attr="training_iteration",  # one iteration = one evaluation
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
        max_t=10_000,
    )


# name -> builder(spec) of the Tune trial scheduler (None: every trial runs to its end)
SCHEDULERS: dict[str, Callable[[Any], Any]] = {"none": lambda spec: None, "asha": _asha}
