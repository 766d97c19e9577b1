"""Search space of funnel-regularized Tucker-2 (define-by-run, no computation).

Knobs map to ``compression.params.<knob>`` (``lr`` to ``optim.lr``): the gate-penalty weight
``lam`` (λ), the pruning ``threshold``, the penalty form (``penalty``: only ``funnel`` unless a
spec widens the choices to ``[funnel, l1, l2]`` for the paper's comparison) and, for the funnel
form, the C-schedule: ``c_schedule`` (constant | linear | exp), ``c0`` (C_0), ``c_final``
(C_T: the end of the linear decay, the floor of the exponential one), ``c_gamma`` (γ) and
``c_every`` (k epochs) of the exponential schedule. No ``pnr``: funnel has no periodic events.
"""

from __future__ import annotations

from typing import Any


def funnel(trial: Any) -> None:
    trial.suggest_float("lr", 1e-3, 0.3, log=True)
    trial.suggest_float("lam", 1e-5, 1e-1, log=True)
    trial.suggest_float("threshold", 0.005, 0.05, log=True)
    if trial.suggest_categorical("penalty", ["funnel"]) != "funnel":
        return  # L1 / L2: no C
    kind = trial.suggest_categorical("c_schedule", ["constant", "linear", "exp"])
    trial.suggest_float("c0", 1e-3, 10.0, log=True)
    if kind in ("linear", "exp"):
        trial.suggest_float("c_final", 1e-4, 1e-1, log=True)
    if kind == "exp":
        trial.suggest_float("c_gamma", 0.1, 0.9)
        trial.suggest_int("c_every", 1, 10)
