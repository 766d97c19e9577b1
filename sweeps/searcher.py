"""The Optuna searcher of a sweep: aware of diverged trials, tolerant of a storage that stops
taking intermediate values. Its study lives in an RDB storage (an SQLite file in the sweep
folder by default), so a resumed sweep keeps the sampler's history and the study opens with
``optuna.load_study`` or optuna-dashboard."""

from __future__ import annotations

import logging

from ray.tune.search.optuna import OptunaSearch

from sweeps.eopt_sampler import E_W_ATTR
from trainers.metrics import final_only

log = logging.getLogger(__name__)


class SweepOptunaSearch(OptunaSearch):
    """OptunaSearch that records a diverged trial (or one failed on its configuration) as FAIL, hands each finished trial's
    ``mean_e_w`` to the study (a user attr, for ``sampler: eopt``), and survives a failed write
    of an intermediate value.

    A diverged trial ends without an error (so that Tune does not retry it) and with NaN
    objectives. OptunaSearch would tell Optuna COMPLETE with NaN, which Optuna refuses (a
    logged ValueError), leaving the trial RUNNING in the study; told as an error, it is FAIL.

    An objective metric known only at the end (``compression_ratio``, ``params``, ``macs``) is
    a NaN placeholder in every result before the last (:class:`sweeps.trial.TuneBridge`): it
    goes into the study neither as an intermediate value nor, for a trial stopped before its
    end, as the trial's value (such a trial is told PRUNED, without values).

    Tune reports every intermediate result to the searcher, which records it in the study. If
    the storage stops taking writes (a sweep folder turned read-only, a database outage), that
    bookkeeping is lost but the trials go on and are counted by how they end; a crash of the
    driver would instead leave every trial unsettled. Suggesting new trials still needs the
    storage, and fails loudly.
    """

    _warned = False

    def _final_only(self) -> list[str]:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        return final_only([m for m in metrics if m])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if result and (result.get("diverged") or result.get("failed")):
            return super().on_trial_complete(trial_id, result=None, error=True)
        if result and not result.get("completed") and self._final_only():
            result = None  # stopped before its end: its final metrics are placeholders
        if result and E_W_ATTR in result and trial_id in self._ot_trials:
            # The e_opt-guided sampler reads each finished trial's e_w from the study, so it
            # goes there with the trial, before the tell (docs/design.md §9.1).
            self._ot_trials[trial_id].set_user_attr(E_W_ATTR, float(result[E_W_ATTR]))
        return super().on_trial_complete(trial_id, result=result, error=error)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._final_only():
            return  # no intermediate value exists (OptunaSearch skips several objectives too)
        try:
            super().on_trial_result(trial_id, result)
        except Exception as e:
            if not SweepOptunaSearch._warned:
                SweepOptunaSearch._warned = True
                log.warning("Optuna study storage refused an intermediate value (%s)",
                            str(e).splitlines()[0][:200])  # fmt: skip
