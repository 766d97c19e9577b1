"""Search spaces of the low-rank family: SVD, tiled SVD, Tucker-2, CP (define-by-run, no computation)."""

from __future__ import annotations

from typing import Any

from search_spaces.pnr import common


def svd(trial: Any) -> None:
    common(trial)
    trial.suggest_float("ratio", 0.05, 0.5)  # rank as a fraction of min(m, n)


def tiled_svd(trial: Any) -> None:
    common(trial)
    trial.suggest_categorical("tile", [8, 16, 32, 64])
    trial.suggest_int("rank", 1, 8)


def tucker2(trial: Any) -> None:
    common(trial)
    trial.suggest_float("rc", 0.3, 0.7)


def cp(trial: Any) -> None:
    common(trial)
    trial.suggest_float("ratio", 0.1, 0.5)  # fraction of each layer's weights the factors keep
