"""The trial function leaves a reused worker process as it found it."""

from __future__ import annotations

import pytest
import torch

from sweeps import trial


def test_trial_restores_torch_process_settings_even_when_it_fails(monkeypatch):
    def failing_trial(config, sweep):
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        raise RuntimeError("boom")

    monkeypatch.setattr(trial, "_run_trial", failing_trial)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            trial.train_trial({}, {})
        assert torch.get_num_threads() == 2
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)


def test_the_searcher_records_a_diverged_trial_as_failed_in_optuna():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.searcher import SweepOptunaSearch

    def space(trial):
        trial.suggest_float("lr", 1e-3, 1.0, log=True)

    states = {}
    for cls in (OptunaSearch, SweepOptunaSearch):
        searcher = cls(space=space, metric="val_accuracy", mode="max", seed=0)
        assert searcher.suggest("t1") is not None and searcher.suggest("t2") is not None
        searcher.on_trial_complete("t1", {"val_accuracy": 0.9})
        diverged = {"val_accuracy": float("nan"), "diverged": True, "status_reason": "nan loss"}
        searcher.on_trial_complete("t2", diverged)
        states[cls] = [t.state for t in searcher._ot_study.trials]
    # Optuna refuses a NaN value: plain OptunaSearch leaves the trial RUNNING in the study
    assert states[OptunaSearch] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.RUNNING,
    ]
    assert states[SweepOptunaSearch] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.FAIL,
    ]
