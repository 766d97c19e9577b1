"""Driver-side bookkeeping of trial runs: a trial that Tune ended without the trial closing its
own MLflow run (stopped early by ASHA, or failed for good) gets its run settled here, with any
points its last checkpoint still held unsent."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweeps.tracking import TrialTracker


def settle_trial_run(
    facts: dict[str, Any],
    trial_id: str,
    status: str,
    checkpoint_dir: str | None,
    timeout: float = 60.0,
) -> bool:
    """Flush what the trial's latest checkpoint held and set the run's final status."""
    from sweeps.trial import TRACKER_FILE

    state = None
    if checkpoint_dir and (Path(checkpoint_dir) / TRACKER_FILE).is_file():
        with open(Path(checkpoint_dir) / TRACKER_FILE, "rb") as f:
            state = pickle.load(f)
    tracker = TrialTracker(
        tracking_uri=facts["tracking_uri"],
        experiment_id=facts["experiment_id"],
        sweep_id=facts["sweep_id"],
        parent_run_id=facts["parent_run_id"],
        trial_id=trial_id,
        state=state,
    )
    return tracker.close(status=status, timeout=timeout)


def _checkpoint_dir(trial: Any) -> str | None:
    ckpt = getattr(trial, "checkpoint", None)
    path = getattr(ckpt, "path", None)
    return path if path and Path(path).is_dir() else None


class TrialRunStatus(Callback):
    """Marks early-stopped trials KILLED and trials that failed for good FAILED in MLflow; a
    diverged trial has settled its own run (FAILED, with the reason) and is left alone."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if not last.get("completed") and not last.get("diverged"):  # stopped by the scheduler
            settle_trial_run(self.facts, trial.trial_id, "KILLED", _checkpoint_dir(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        settle_trial_run(self.facts, trial.trial_id, "FAILED", _checkpoint_dir(trial))
