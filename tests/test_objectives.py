"""Sweeps whose objective includes a metric known only at a trial's end (compression_ratio,
params, macs), on a real Ray runtime and a real `mlflow server`: they run to the end, Optuna is
told each trial's final values (those in MLflow), and the best trials can be read back."""

from __future__ import annotations

import re

import optuna
import pytest
from sweep_helpers import sweep_runs, tiny_spec
from test_sweeps import local_ray  # noqa: F401 - the module-scoped local Ray runtime

from sweeps.results import best_configs, resolve_sweep
from sweeps.runner import run_sweep
from sweeps.spec_checks import parse_spec

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("sampler", "metrics"),
    [
        ("nsga2", ["val_accuracy", "compression_ratio"]),
        ("tpe", ["val_loss", "params"]),
        ("tpe", ["macs"]),  # one objective: Optuna would take intermediate values of it
    ],
)
def test_an_objective_known_only_at_the_end_is_told_its_final_value(
    local_ray,  # noqa: F811
    mlflow_server,
    tmp_path,
    capsys,
    sampler,
    metrics,
):
    name = f"end-{'-'.join(metrics)}".replace("_", "-")
    data = tiny_spec(name, mlflow_server.uri, str(tmp_path / "r"), trials=2, steps=36)
    data["objective"] = {"metrics": metrics}
    data["search"] = {"sampler": sampler}
    # Several evaluations per trial: each one is a result before the end.
    data["train"]["run"]["eval_every"] = 0.5
    record = run_sweep(parse_spec(data))

    assert record.outcome.exit_code() == 0
    assert record.outcome.counts["finished"] == 2
    _, children = sweep_runs(mlflow_server.uri, name, record.sweep_id)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    study = optuna.load_study(study_name=record.sweep_id, storage=record.study_storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # No placeholder reached the study: no intermediate values, and each trial's values are
    # exactly its run's final metrics.
    assert all(t.intermediate_values == {} for t in study.trials)
    told = sorted(tuple(t.values) for t in study.trials)
    logged = sorted(tuple(r.data.metrics[m] for m in metrics) for r in children)
    assert told == logged

    text = capsys.readouterr().out
    assert "2/2 trials: 2 finished" in text
    assert not re.search(r"\bnan\b", text, re.I)  # no placeholder in a progress line or the table
    title = "Pareto front:" if len(metrics) > 1 else f"best finished trials by {metrics[0]}:"
    table = text.split(title, 1)[1].split("\n\nMLflow:", 1)[0].strip().splitlines()
    columns = table[0].split()
    short = {"val_accuracy": "val_acc", "compression_ratio": "ratio"}
    assert all(short.get(m, m) in columns for m in metrics)  # a column for each objective
    best_runs = {line.split()[-1] for line in table[1:]}
    assert best_runs and best_runs <= {r.info.run_id for r in children}

    ref = resolve_sweep(record.path)
    best = best_configs(ref)  # ranks by the first objective
    key = metrics[0]
    direction = max if key == "val_accuracy" else min
    assert best.configs[0]["provenance"]["metrics"][key] == direction(
        r.data.metrics[key] for r in children
    )
    if len(metrics) > 1:  # `best --pareto` takes the front of the sweep's objectives
        front = best_configs(ref, pareto=True).configs
        assert {c["provenance"]["run_id"] for c in front} == best_runs
