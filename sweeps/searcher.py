"""The Optuna searcher of a sweep, aware of diverged trials."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class SweepOptunaSearch(OptunaSearch):
    """OptunaSearch that records a diverged trial as FAIL in the Optuna study.

    A diverged trial ends without an error (so that Tune does not retry it) and with NaN
    objectives. OptunaSearch would tell Optuna COMPLETE with NaN, which Optuna refuses (a
    logged ValueError), leaving the trial RUNNING in the study; told as an error, it is FAIL.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if result and result.get("diverged"):
            return super().on_trial_complete(trial_id, result=None, error=True)
        return super().on_trial_complete(trial_id, result=result, error=error)
