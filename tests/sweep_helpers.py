"""Shared pieces of the sweep integration tests: tiny specs and MLflow checks."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mlflow import MlflowClient

SERIES = ("e_w", "e_w_per_pnr", "delta_w", "loss_pre", "loss_post", "delta_loss_ratio",
          "val_acc_pre", "val_accuracy", "val_loss", "test_accuracy", "test_loss", "train_loss")  # fmt: skip


def tiny_spec(name: str, tracking_uri: str, storage: str, *, trials: int = 4, steps: int = 60,
              concurrent: int = 2, n_train: int = 128, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A sweep of small CNNs on 8x8 synthetic data: each trial takes a few seconds."""
    spec = {
        "name": name,
        "train": {
            "data": {
                "name": "synthetic",
                "batch_size": 16,
                "options": {"n_train": n_train, "n_test": 64},
            },
            "model": {"name": "small_cnn"},
            "compression": {"targets": {"min_params": 10}},
            "run": {"steps": steps, "eval_every": 1.0, "device": "cpu"},
        },
        "space": {"name": "prune", "overrides": {"pnr": {"low": 2, "high": 6}, "lr": 0.05}},
        "budget": {"num_trials": trials, "max_concurrent": concurrent},
        "resources": {"cpus": 1},
        "failure": {"max_failures": 3},
        "storage": {"path": storage},
        "tracking": {"uri": tracking_uri},
    }
    spec.update(extra)
    return spec


def sweep_runs(uri: str, experiment_name: str, sweep_id: str | None = None) -> tuple[list, list]:
    """(parent runs, child runs) of an experiment, optionally of one sweep."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    if sweep_id:
        runs = [r for r in runs if r.data.tags.get("compsweep.sweep_id") == sweep_id]
    parents = [r for r in runs if r.data.tags.get("compsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("compsweep.role") == "trial"]
    return parents, children


def assert_complete_series(uri: str, run) -> None:
    """Every series of docs/design.md §3 has more than one point, each (key, step) exactly once,
    one e_w point per distortion event of the trial, and probe losses at a subset of the events."""
    client = MlflowClient(uri)
    events = int(run.data.metrics["num_distortions"])
    for key in SERIES:
        history = client.get_metric_history(run.info.run_id, key)
        steps = Counter(m.step for m in history)
        assert len(history) > 1, (key, len(history))
        assert max(steps.values()) == 1, (key, [s for s, n in steps.items() if n > 1])
        if key in ("e_w", "delta_w"):
            assert len(history) == events, (key, len(history), events)
    # The probe losses are measured at every run.measure_every-th event and at evaluations:
    # a subset of the events that includes the first and the last.
    event_steps = {m.step for m in client.get_metric_history(run.info.run_id, "e_w")}
    measured = {m.step for m in client.get_metric_history(run.info.run_id, "loss_pre")}
    assert measured <= event_steps and {min(event_steps), max(event_steps)} <= measured
