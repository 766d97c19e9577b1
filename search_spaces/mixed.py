"""The compression method itself as a searched choice, each branch its own space."""

from __future__ import annotations

from typing import Any

from search_spaces.lowrank import svd, tiled_svd, tucker2
from search_spaces.pnr import gaussian_noise, prune, quantize, uniform_noise, weight_decay

BRANCHES = {
    "weight_decay": weight_decay,
    "uniform_noise": uniform_noise,
    "gaussian_noise": gaussian_noise,
    "prune": prune,
    "quantize": quantize,
    "svd": svd,
    "tiled_svd": tiled_svd,
    "tucker2": tucker2,
}


def mixed(trial: Any) -> None:
    method = trial.suggest_categorical("method", list(BRANCHES))
    if method not in BRANCHES:  # a spec's choices or fixed value outside the branches
        raise ValueError(f"method {method!r} is not one of its branches: {', '.join(BRANCHES)}")
    BRANCHES[method](trial)
