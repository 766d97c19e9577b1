"""Optimizers and learning-rate schedules by name: the one list of what ``optim.optimizer`` and
``optim.schedule`` accept, used by config validation, the trainer and the README's table."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


def _sgd(params: Iterable[Any], o: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )


def _adam(params: Iterable[Any], o: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay)


# name -> builder(params, optim section, lr)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "adam": _adam}


# name -> lr multiplier(optim section, epoch, step, total_steps); milestones are in epochs.
LR_SCHEDULES: dict[str, Callable[[Any, float, int, int], float]] = {
    "constant": lambda o, epoch, step, total: 1.0,
    "step": lambda o, epoch, step, total: o.gamma ** math.floor(epoch / o.step_size),
    "multistep": lambda o, epoch, step, total: o.gamma ** sum(epoch >= m for m in o.milestones),
    "cosine": lambda o, epoch, step, total: (
        0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    ),
}


def make_optimizer(
    params: Iterable[Any], optim: Any, lr: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.optimizer`` (an ``optim`` config section) over ``params``."""
    return OPTIMIZERS[optim.optimizer](params, optim, optim.lr if lr is None else lr)


def lr_factor(optim: Any, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Learning-rate multiplier of schedule ``optim.schedule`` after ``step`` optimizer steps."""
    return LR_SCHEDULES[optim.schedule](optim, step / steps_per_epoch, step, total_steps)


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: Any, steps_per_epoch: int, steps: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The schedule ``optim.schedule`` of ``optimizer`` over a run (or phase) of ``steps``
    optimizer steps; None for a constant learning rate."""
    if optim.schedule == "constant":
        return None
    steps = max(steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(optim, s, steps_per_epoch, steps)
    )
