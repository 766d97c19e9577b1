"""The sweep's Optuna searcher, its study persisted in an RDB storage (by default an SQLite
file in the sweep folder), so a resumed sweep keeps the sampler's history and the study can be
opened with ``optuna.load_study`` or optuna-dashboard."""

from __future__ import annotations

import logging

from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class StudySearch(OptunaSearch):
    """OptunaSearch whose intermediate reports may fail without failing the sweep.

    Tune reports every intermediate result to the searcher, which records it in the study. If
    the storage stops taking writes (a sweep folder turned read-only, a database outage), that
    bookkeeping is lost but the trials go on and are counted by how they end; a crash of the
    driver would instead leave every trial unsettled. Suggesting new trials still needs the
    storage, and fails loudly.
    """

    _warned = False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except Exception as e:
            if not StudySearch._warned:
                StudySearch._warned = True
                log.warning("Optuna study storage refused an intermediate value (%s)",
                            str(e).splitlines()[0][:200])  # fmt: skip
