"""Compression *recipes*: methods that restructure the model and train in phases.

A distortion (:mod:`trainers.distortions`) keeps the model's structure and replaces the target
weights by ``h(w)`` every pNR steps. A recipe instead changes the structure up front, adds a
term to the loss, and restructures again once, between a regularized phase and a fine-tuning
phase (funnel-regularized Tucker-2, :mod:`trainers.distortions.funnel`). The
:class:`~trainers.loop.Trainer` consults a recipe through these hooks, in this order::

    prepare(model, targets, info, epochs) -> model   # once, before the optimizer is built
    report(model, "decompose")                        # phase metrics (accuracy/params/MACs
    extra_loss(model, epoch)  (every step)            #   are measured by the trainer)
    report(model, "train")                            # end of the regularized phase
    end_phase(model) -> (model, report)               # prune / fold / keep-or-revert
    ... fine-tuning for ``finetune_epochs`` with a new optimizer, no extra loss ...
    report(model, "finetune")

Recipes live in the same registry as the distortions (``compression.method`` names either), so
config validation, target selection (:meth:`applies_to`, :meth:`validate`) and the sweep checks
treat every method alike; the trainer tells a recipe from a distortion with ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from trainers.data import DataInfo


@dataclass
class PhaseReport:
    """What a recipe adds to a phase's metrics: scalars (logged as metrics, prefixed with the
    phase name in the final metrics) and ``details``, a small JSON-able mapping (e.g. a gate
    histogram per layer) for the callbacks to store as they see fit."""

    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class MethodRecipe:
    """Base class of the phase-structured compression methods (see the module docstring).

    Attributes:
        finetune_epochs: length of the fine-tuning phase after :meth:`end_phase` (0: none).
        finetune_lr: learning rate of the fine-tuning phase (None: ``optim.lr``).
    """

    name: ClassVar[str] = ""
    finetune_epochs: float = 0.0
    finetune_lr: float | None = None

    # -- target selection (the same contract as Distortion) ------------------------------
    def applies_to(self, name: str, w: torch.Tensor) -> bool:
        return True

    def validate(self, weights: Mapping[str, torch.Tensor]) -> list[str]:
        return []

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    # -- training hooks -------------------------------------------------------------------
    def prepare(
        self, model: nn.Module, targets: Mapping[str, nn.Parameter], info: DataInfo, epochs: float
    ) -> nn.Module:
        """Restructure ``model`` for the regularized phase of ``epochs`` epochs (may be the same
        object, modified in place). Called before the optimizer is built."""
        return model

    def extra_loss(self, model: nn.Module, epoch: int) -> torch.Tensor:
        """The term added to the task loss at a step of (0-based, whole) ``epoch`` of the
        regularized phase. Called once per step: keep it cheap."""
        raise NotImplementedError

    def report(self, model: nn.Module, phase: str) -> PhaseReport:
        """Method-specific metrics of ``phase`` ("decompose", "train", "finetune")."""
        return PhaseReport()

    def end_phase(self, model: nn.Module) -> tuple[nn.Module, PhaseReport]:
        """End of the regularized phase: return the compressed model and the "compress" report."""
        return model, PhaseReport()

    # -- resume across end_phase ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """What :meth:`restore` needs to rebuild the post-:meth:`end_phase` structure, or None
        while the model still has its :meth:`prepare` structure."""
        return None

    def restore(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        """Turn the freshly prepared ``model`` into the structure described by ``state`` (weights
        are loaded afterwards by the trainer)."""
        return model
