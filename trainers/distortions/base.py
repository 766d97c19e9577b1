"""The distortion interface: a compression function h(w) applied to the target weights.

A distortion is a plain function on tensors plus a thin class carrying its knobs (Composer
style). It returns the distorted tensors and never logs: the trainer measures e_w, delta_w
and the loss change and hands them to its callbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class DistortionContext:
    """Where in training a distortion event happens.

    Attributes:
        step: optimizer steps done so far (the event happens after this many steps).
        total_steps: optimizer steps the run will make (a multiple of pNR).
        event: index of this event, 0-based.
        num_events: number of distortion events in the whole run.
        seed: run seed; random distortions derive their generator from (seed, event) so a
            resumed run draws exactly the same noise.
        lr: the learning rate of the last optimizer step (proximal steps scale with it).
    """

    step: int
    total_steps: int
    event: int
    num_events: int
    seed: int = 0
    lr: float = 0.0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded by (seed, event): independent of anything else drawn in training."""
        g = torch.Generator(device=device)
        g.manual_seed((self.seed * 1_000_003 + self.event * 7919 + 17) % (2**63 - 1))
        return g


class Distortion:
    """Base class: subclasses set ``name`` and implement :meth:`distort_tensor` (or
    :meth:`apply` when the rule couples tensors, e.g. global pruning); methods that change
    the layers' structure also implement :meth:`export_layer`.

    Weights are passed as ``{parameter name: tensor}``; conv kernels have shape
    ``(T, S, d, d)``, linear weights ``(out, in)``.
    """

    name: ClassVar[str] = ""

    def applies_to(self, name: str, w: torch.Tensor) -> bool:
        """Whether the default target selection includes this tensor (``targets.include``
        patterns override it). All weights by default."""
        return True

    def validate(self, weights: Mapping[str, torch.Tensor]) -> list[str]:
        """Problems that make this distortion impossible on these weights (empty if fine).

        Called once at config time, before training, so the user learns of e.g. a rank larger
        than a layer's dimensions before anything runs. Messages name the layer and the fix.
        """
        return []

    def apply(
        self, weights: Mapping[str, torch.Tensor], ctx: DistortionContext
    ) -> dict[str, torch.Tensor]:
        """Return ``h(w)`` for every target tensor (new tensors; inputs are not modified)."""
        return {name: self.distort_tensor(name, w, ctx) for name, w in weights.items()}

    def distort_tensor(self, name: str, w: torch.Tensor, ctx: DistortionContext) -> torch.Tensor:
        raise NotImplementedError

    def stored_params(self, name: str, w: torch.Tensor) -> float:
        """Storage cost of the compressed tensor ``w = h(w)`` in 32-bit-number units.

        Dense by default (decay and noise do not compress).
        """
        return float(w.numel())

    def macs_fraction(self, name: str, w: torch.Tensor) -> float:
        """Fraction of the layer's dense MACs the compressed form needs (1.0 when dense)."""
        return 1.0

    def export_layer(self, module: nn.Module, weight: torch.Tensor) -> nn.Module | None:
        """The compressed replacement of one target layer, or None to keep ``module`` as it is.

        Called by :func:`trainers.export.export` once per target, under ``torch.no_grad``:
        ``module`` is the layer owning the target parameter (in the exported copy) and
        ``weight`` that parameter's current value, normally already ``h(w)``. The returned
        module takes ``module``'s place (export moves it to ``module``'s device, dtype and
        training mode) and must compute the same function. None, the default, means the
        compressed form is the dense structure itself (decay, noise, pruning, quantization
        change values, not shapes). Raise ``ValueError`` for a layer that cannot be
        restructured; export names the target in the message.
        """
        return None

    def config(self) -> dict[str, Any]:
        """The knobs, for logging and for reproducing the distortion."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def as_rows(w: torch.Tensor) -> torch.Tensor:
    """View a weight as a matrix with one row per output unit: conv ``(T, S·d·d)``."""
    return w.reshape(w.shape[0], -1)
