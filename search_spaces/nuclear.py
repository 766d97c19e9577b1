"""Search space of nuclear-norm proximal training (define-by-run, no computation).

``pnr`` is the period of the proximal events in optimizer steps (the paper: one epoch — fix it
to the number of steps per epoch; keep it numeric, the e_opt analysis reads it as a number, so
``compression.pnr: epoch`` is for training configs, not for this knob). ``tau`` (τ) weighs the nuclear
norm (singular values shrink by lr·τ per event); ``lam`` (λ, 0 = off) and ``alpha`` (α) weigh
the optional sparse group Lasso on units; ``energy`` (e_l, %) sets the rank kept at export.
"""

from __future__ import annotations

from typing import Any

from search_spaces.pnr import common


def nuclear(trial: Any) -> None:
    common(trial)
    trial.suggest_float("tau", 1e-2, 10.0, log=True)
    trial.suggest_float("lam", 0.0, 0.5)
    trial.suggest_float("alpha", 0.0, 1.0)
    trial.suggest_float("energy", 80.0, 100.0)
