"""Search spaces of the occasional-regularization (pNR) family: decay, noise, pruning, bits.

Plain define-by-run functions (Optuna style): they only call ``trial.suggest_*``; no
computation. How spaces are built and narrowed: docs/design.md §6; a sweep spec narrows or fixes
any knob by name.
"""

from __future__ import annotations

from typing import Any


def common(trial: Any) -> None:
    """Knobs every occasional-regularization method shares."""
    trial.suggest_int("pnr", 1, 5000, log=True)
    trial.suggest_float("lr", 1e-3, 0.3, log=True)


def weight_decay(trial: Any) -> None:
    common(trial)
    trial.suggest_float("theta", 1e-5, 1e-1, log=True)


def uniform_noise(trial: Any) -> None:
    common(trial)
    trial.suggest_float("a", 0.0, 0.5)


def gaussian_noise(trial: Any) -> None:
    common(trial)
    trial.suggest_float("eta", 1e-4, 1e-1, log=True)


def prune(trial: Any) -> None:
    common(trial)
    trial.suggest_float("rate", 0.5, 0.99)


def quantize(trial: Any) -> None:
    common(trial)
    trial.suggest_categorical("bits", [1, 2, 3, 4])
