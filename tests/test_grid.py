"""Grid search: every cell of the choices' product runs exactly once, also with concurrent trials."""

from __future__ import annotations

import itertools

import optuna
import pytest
from sweep_helpers import sweep_runs, tiny_spec

from search_spaces import define_by_run
from sweeps.searchers import SAMPLERS
from sweeps.spec import SpecError
from sweeps.spec_checks import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
GRID = {"pnr": {"choices": [2, 3]}, "rate": {"choices": [0.5, 0.8]}, "lr": 0.05}
CELLS = set(itertools.product([2, 3], [0.5, 0.8]))


def grid_spec(uri: str, storage: str) -> dict:
    data = tiny_spec("grid", uri, storage, steps=24, concurrent=2)
    del data["budget"]["num_trials"]  # a grid's default: its size
    data["space"]["overrides"] = GRID
    data["search"] = {"sampler": "grid"}
    # Metrics reported under the same name before and after the validation split exists;
    # the cells run are what this test is about, not the objective.
    data["objective"] = {"metrics": ["compression_ratio", "params"]}
    return data


def test_concurrent_asks_take_distinct_cells_and_the_last_tell_does_not_raise(tmp_path):
    spec = parse_spec(grid_spec("sqlite:///m.db", str(tmp_path / "r")), check_tracking=False)
    assert spec.budget.num_trials == len(CELLS)
    directions = [{"max": "maximize", "min": "minimize"}[m] for m in spec.objective.modes()]
    study = optuna.create_study(directions=directions, sampler=SAMPLERS["grid"](spec))
    space = define_by_run(spec.space.name, spec.space.overrides)
    trials = [study.ask() for _ in range(spec.budget.num_trials)]  # all running at once
    fixed = [space(t) for t in trials]
    assert {(t.params["pnr"], t.params["rate"]) for t in trials} == CELLS
    assert all(f == {"lr": 0.05} for f in fixed)  # fixed knobs are not grid axes
    for t in trials:
        study.tell(t, [1.0, 1.0])  # Optuna's own grid sampler raises on the last tell here
    assert len(study.trials) == len(CELLS)


def test_replicates_run_each_cell_once_per_seed(tmp_path):
    data = grid_spec("sqlite:///m.db", str(tmp_path / "r"))
    data["search"]["replicates"] = 3
    data["train"]["run"]["seed"] = 7
    spec = parse_spec(data, check_tracking=False)
    assert spec.budget.num_trials == 3 * len(CELLS)
    assert spec.replicate_seeds() == [7, 8, 9]
    directions = [{"max": "maximize", "min": "minimize"}[m] for m in spec.objective.modes()]
    study = optuna.create_study(directions=directions, sampler=SAMPLERS["grid"](spec))
    space = define_by_run(spec.space.name, spec.space.overrides, spec.replicate_seeds())
    trials = [study.ask() for _ in range(spec.budget.num_trials)]
    for t in trials:
        space(t)
    runs = [(t.params["pnr"], t.params["rate"], t.params["seed"]) for t in trials]
    assert sorted(runs) == sorted((*c, s) for c in CELLS for s in (7, 8, 9))


def test_replicates_are_checked_against_the_budget_and_the_sampler(tmp_path):
    data = grid_spec("sqlite:///m.db", str(tmp_path / "r"))
    data["search"]["replicates"] = 2
    data["budget"]["num_trials"] = 4
    with pytest.raises(SpecError) as e:
        parse_spec(data, check_tracking=False)
    assert "budget.num_trials: a grid runs each of its 4 cells 2 times" in str(e.value)
    assert "set it to 8 (got 4)" in str(e.value)
    data["search"] = {"sampler": "tpe", "replicates": 2}
    data["space"]["overrides"] = {"lr": 0.05}
    with pytest.raises(SpecError) as e:
        parse_spec(data, check_tracking=False)
    assert "search.replicates" in str(e.value) and "sampler: grid" in str(e.value)


@pytest.mark.integration
def test_a_grid_sweep_runs_each_cell_once_per_replicate_two_at_a_time(mlflow_server, tmp_path):
    import ray

    from sweeps.analysis import curve_points
    from sweeps.results import load_trials, resolve_sweep
    from sweeps.runner import run_sweep

    data = grid_spec(mlflow_server.uri, str(tmp_path / "r"))
    data["space"]["overrides"] = {**GRID, "rate": {"choices": [0.5]}}
    data["search"]["replicates"] = 2
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        record = run_sweep(parse_spec(data))
    finally:
        ray.shutdown()
    parents, children = sweep_runs(mlflow_server.uri, "grid", record.sweep_id)
    assert len(parents) == 1 and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    runs = [(int(r.data.params["knob.pnr"]), int(r.data.params["run.seed"])) for r in children]
    assert sorted(runs) == [(2, 0), (2, 1), (3, 0), (3, 1)]  # each cell once per seed
    # The seed is the run's, not a knob: a cell's two seeds make one point of the curve.
    trials = load_trials(resolve_sweep(record.path))
    assert all("seed" not in t.knobs for t in trials)
    assert sorted(len(p.trials) for p in curve_points(trials)) == [2, 2]
