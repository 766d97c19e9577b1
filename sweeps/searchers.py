"""Optuna samplers and Tune schedulers by name: the one list of what ``search.sampler`` and
``scheduler.name`` accept, used by spec validation, the runner and the README's table.

Builders import Optuna and Ray only when called, so validating a spec stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_spaces import branches, grid_space
from trainers.metrics import validation_metrics
from trainers.validation import Problem


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


def _eopt(spec: Any) -> Any:
    from sweeps.eopt_sampler import EoptSampler  # imports Optuna: at call, as in _tpe

    given = spec.search.e_opt
    return EoptSampler(
        seed=spec.seed,
        metric=spec.objective.metrics[0],
        e_opt=None if given is None else (given.value, given.low, given.high),
    )


# name -> builder(spec) of the Optuna sampler
SAMPLERS: dict[str, Callable[[Any], Any]] = {
    "tpe": _tpe,
    "nsga2": _nsga2,
    "random": _random,
    "grid": _grid,
    "eopt": _eopt,
}


def eopt_problems(search: Any, metrics: list[str], space: Any) -> list[Problem]:
    """What ``sampler: eopt`` needs of a spec: e_opt is located on the first objective, which
    must be a validation metric, and pNR must be searched; ``search.e_opt`` is for it alone."""
    p: list[Problem] = []
    if search.sampler != "eopt":
        if search.e_opt is not None:
            p.append(Problem("search.e_opt", f"a known e_opt guides sampler eopt only; "
                             f"{search.sampler!r} does not use it: use sampler: eopt, or drop "
                             "e_opt (and --eopt-from)"))  # fmt: skip
        return p
    if metrics and metrics[0] not in validation_metrics():
        p.append(Problem("objective.metrics", f"eopt locates e_opt on the first objective, which "
                         f"must be a validation metric ({', '.join(validation_metrics())}); got "
                         f"{metrics[0]!r}"))  # fmt: skip
    if space is not None:
        for knobs in branches(space.name, space.overrides):
            pnr = knobs.get("pnr", {})
            if pnr.get("kind") not in ("int", "float") or pnr["low"] == pnr["high"]:
                p.append(Problem("space", f"eopt sets pNR from e_opt, so space {space.name!r} "
                                 "must search pnr over a range (not fixed, not absent)"))  # fmt: skip
                break
    return p


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
