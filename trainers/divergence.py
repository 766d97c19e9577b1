"""Divergence detection: a non-finite loss or weight stops the run with what, where and a fix.

The checks ride on host syncs the trainer makes anyway (every distortion event, evaluation and
phase end of a recipe), so detecting divergence costs no extra device round trip.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from trainers.distortion_events import EventNumbers


class TrainingDiverged(RuntimeError):
    """The training loss or the weights became non-finite.

    Attributes:
        step: the optimizer step at which it was detected.
        reason: what was non-finite, at which step, and what to change.
    """

    def __init__(self, step: int, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"training diverged: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (a trial's error crossing to the driver) with its fields: the default would
        # call ``__init__`` with the message alone.
        return type(self), (self.step, self.reason)


def finite_train_loss(
    model: nn.Module, loss_sum: torch.Tensor, loss_count: int, step: int
) -> float:
    """The mean training loss ``loss_sum / loss_count``, once it and every floating-point weight
    and buffer of ``model`` are known finite (one device sync); else raise
    :class:`TrainingDiverged` naming the first non-finite one."""
    state = [(k, t) for k, t in model.state_dict().items() if t.is_floating_point()]
    mean = (loss_sum / max(loss_count, 1)).reshape(1).float()
    finite = torch.stack([torch.isfinite(t).all() for _, t in state]).float()
    train_loss, *flags = torch.cat([mean, finite]).tolist()
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            step, f"non-finite training loss ({train_loss}) at step {step}; lower optim.lr"
        )
    bad = [k for (k, _), ok in zip(state, flags, strict=True) if not ok]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise TrainingDiverged(
            step,
            f"non-finite weights or statistics ({bad[0]}{more}) at step {step}; lower optim.lr",
        )
    return float(train_loss)


def check_event(nums: EventNumbers, step: int, method: str, loss_count: int) -> None:
    """Raise :class:`TrainingDiverged` if a distortion event's numbers show a non-finite loss or
    weights: first what training did, then what the distortion did.

    Args:
        nums: the event's numbers (its ``train_loss`` is a sum over ``loss_count`` steps).
        step: the step of the event.
        method: the distortion's name (for the message).
        loss_count: training steps summed into ``nums.train_loss``.
    """
    train_loss, e_w, delta_w = nums.train_loss, nums.e_w, nums.delta_w
    loss_pre, loss_post = nums.losses or (0.0, 0.0)  # 0 at events that do not measure them
    if math.isfinite(train_loss + loss_pre + e_w + delta_w + loss_post):
        return
    if not math.isfinite(train_loss):
        mean = train_loss / max(loss_count, 1)
        reason = f"non-finite training loss ({mean}) at step {step}; lower optim.lr"
    elif not math.isfinite(loss_pre):
        reason = (
            f"non-finite loss ({loss_pre}) of the model before the distortion at step {step}: "
            "its weights diverged; lower optim.lr"
        )
    else:
        reason = (
            f"the {method} distortion at step {step} left non-finite "
            f"weights or loss (e_w {e_w}, loss after {loss_post}); lower optim.lr or check "
            "compression.params"
        )
    raise TrainingDiverged(step, reason)


def check_eval_loss(split: str, loss: float, step: int) -> None:
    """Raise :class:`TrainingDiverged` if an evaluation loss is non-finite: the weights were
    checked finite just before, so the data is the suspect."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            step,
            f"non-finite {split} loss ({loss}) at step {step} with finite weights; check the data",
        )
