"""`compsweep best` and the sweep's closing table rank by each metric's catalogue direction;
test metrics, direction-less metrics, NaN/inf values and diverged trials never rank."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from sweeps import results
from sweeps.progress import best_rows
from sweeps.results import SweepRef, best_configs


def run(
    tid: str,
    status: str = "FINISHED",
    diverged: str | None = None,
    run_params: dict | None = None,
    **metrics: float,
):
    tags = {"compsweep.trial_id": tid}
    if diverged:
        tags |= {"compsweep.status": "diverged", "compsweep.status_reason": diverged}
    return SimpleNamespace(
        info=SimpleNamespace(run_id=f"run-{tid}", status=status),
        data=SimpleNamespace(metrics=metrics, tags=tags, params=run_params or {}),
    )


RUNS = [
    run("a", val_accuracy=0.90, test_accuracy=0.99, train_loss=0.30, params=500.0),
    run("b", val_accuracy=0.95, test_accuracy=0.80, train_loss=0.10, params=900.0),
    run("c", val_accuracy=0.85, test_accuracy=0.85, train_loss=0.50, params=100.0),
    run("nan", val_accuracy=math.nan, train_loss=math.nan, params=math.nan),
    run("inf", val_accuracy=math.inf, train_loss=-math.inf, params=-math.inf),
    run(
        "div",
        "FAILED",
        diverged="non-finite training loss (nan) at step 6; lower optim.lr",
        val_accuracy=0.99,
        train_loss=0.01,
        params=1.0,
    ),  # fmt: skip
    run("running", "RUNNING", val_accuracy=0.999, train_loss=0.001, params=1.0),
]


@pytest.fixture
def ref(monkeypatch, tmp_path) -> SweepRef:
    monkeypatch.setattr(results, "find_trial_runs", lambda *a: RUNS)
    monkeypatch.setattr(results, "_artifact_yaml", lambda client, run_id, path: {"from": run_id})
    return SweepRef(f"sqlite:///{tmp_path}/mlflow.db", "1", "sweep-x", "parent", ["val_accuracy"])


def trial_ids(best) -> list[str]:
    return [c["provenance"]["trial_id"] for c in best.configs]


def test_default_metric_is_the_objective_and_higher_accuracy_wins(ref):
    best = best_configs(ref, top=3)
    assert trial_ids(best) == ["b", "a", "c"]  # not "a", the best on test
    assert best.configs[0]["config"] == {"from": "run-b"}
    assert best.configs[0]["provenance"]["metrics"]["test_accuracy"] == 0.80  # shown, not used


def test_replicates_rank_by_their_mean_not_their_luckiest_seed(monkeypatch, ref):
    def seeded(tid, pnr, seed, acc):
        params = {"knob.pnr": str(pnr), "knob.seed": str(seed), "run.seed": str(seed)}
        return run(tid, run_params=params, val_accuracy=acc, test_accuracy=acc - 0.01)

    runs = [seeded("lucky", 10, 0, 0.95), seeded("lucky-1", 10, 1, 0.80),
            seeded("steady-1", 30, 1, 0.91), seeded("steady", 30, 0, 0.90)]  # fmt: skip
    monkeypatch.setattr(results, "find_trial_runs", lambda *a: runs)
    best = best_configs(ref, top=2)
    assert trial_ids(best) == ["steady", "lucky"]  # mean 0.905 beats 0.875; seed 0 stands for it
    top = best.configs[0]["provenance"]
    assert top["metrics"]["val_accuracy"] == pytest.approx(0.905)
    assert top["metrics"]["test_accuracy"] == pytest.approx(0.895)
    assert top["seeds"] == {"0": {"run_id": "run-steady", "val_accuracy": 0.90},
                            "1": {"run_id": "run-steady-1", "val_accuracy": 0.91}}  # fmt: skip


def test_a_loss_ranks_lowest_first(ref):
    assert trial_ids(best_configs(ref, top=2, metric="train_loss")) == ["b", "a"]
    assert trial_ids(best_configs(ref, top=1, metric="params")) == ["c"]


def test_diverged_unfinished_and_non_finite_trials_never_rank_and_are_reported(ref):
    best = best_configs(ref, top=10)
    assert trial_ids(best) == ["b", "a", "c"]
    assert best.diverged == [("div", "non-finite training loss (nan) at step 6; lower optim.lr")]
    assert best.unranked == 3  # nan, inf, running


@pytest.mark.parametrize(
    "metric,why",
    [
        ("test_accuracy", "measured on the test split, which is never used to select"),
        ("e_w", "has no better direction"),
        ("acc", "unknown metric"),
    ],
)
def test_test_and_directionless_metrics_are_refused(ref, metric, why):
    with pytest.raises(ValueError, match=why) as e:
        best_configs(ref, metric=metric)
    assert "val_accuracy" in str(e.value)  # says what may rank


def test_the_closing_table_skips_diverged_and_non_finite_rows():
    rows = [
        {"trial": "a", "status": "TERMINATED", "val_accuracy": 0.9},
        {"trial": "b", "status": "TERMINATED", "val_accuracy": 0.95},
        {"trial": "nan", "status": "TERMINATED", "val_accuracy": math.nan},
        {"trial": "div", "status": "DIVERGED", "val_accuracy": 0.99},
        {"trial": "none", "status": "ERROR"},
    ]
    assert [r["trial"] for r in best_rows(rows, ["val_accuracy"], ["max"], 5)] == ["b", "a"]
    rows = [
        {"trial": t, "status": "TERMINATED", "val_loss": v} for t, v in (("x", 0.5), ("y", 0.2))
    ]
    assert [r["trial"] for r in best_rows(rows, ["val_loss"], ["min"], 5)] == ["y", "x"]
