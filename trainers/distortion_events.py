"""The bookkeeping of a distortion event: apply ``h`` to the targets and measure what it did.

Every event reports ``e_w`` (mean ``|w − h(w)|``), ``e_w_per_pnr`` and ``delta_w`` (mean
``(w − h(w))²``); measured events (every ``run.measure_every``-th and every evaluation's) also
report the probe losses before and after, ``loss_pre`` / ``loss_post``, and their relative
change ``delta_loss_ratio`` (ΔL/L).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainers.distortions import Distortion, DistortionContext


def auto_measure_every(probe_size: int, batch_size: int, pnr: int, budget: float) -> int:
    """How often to measure the probe losses: at every k-th event, for the smallest k whose
    cost stays within ``budget`` of the training compute.

    Measuring one event is two forward passes of the probe batch, with no backward and no
    optimizer step; a training step is a forward and a backward pass (about three forwards)
    of a training batch. So one measurement costs about ``2·P / (3·B)`` training steps, spread
    over the ``k·pNR`` steps between measurements. The model is deterministic (no timing), so a
    resumed run measures exactly the events the uninterrupted one did.
    """
    per_step = 2.0 * probe_size / (3.0 * batch_size) / pnr
    return max(1, math.ceil(per_step / budget - 1e-9))


@torch.no_grad()
def distort_targets(
    distortion: Distortion, targets: Mapping[str, nn.Parameter], ctx: DistortionContext
) -> tuple[list[torch.Tensor], int]:
    """Overwrite every target ``w`` with ``h(w)``.

    Returns:
        per changed target ``Σ|w − h(w)|`` and ``Σ(w − h(w))²`` (0-dim tensors on the device,
        read later in the event's one sync), and the number of target elements (at least 1).
    """
    after = distortion.apply({n: p.detach() for n, p in targets.items()}, ctx)
    sums: list[torch.Tensor] = []
    n = 0
    for name, p in targets.items():
        new = after[name]
        n += p.numel()
        if new.data_ptr() == p.data_ptr():  # h left this tensor as it was
            continue
        # The difference is formed in the parameter itself, which h(w) overwrites next: no
        # temporary. abs_ in place after the dot: vector_norm(ord=1) is ~8x slower on CPU than
        # abs_ + sum, and this runs at every event.
        diff = p.data.sub_(new).view(-1)
        sq = torch.dot(diff, diff)
        sums += [diff.abs_().sum(), sq]
        p.copy_(new)
    return sums, max(n, 1)


@dataclass(frozen=True)
class EventNumbers:
    """What one event measured, on the host.

    Attributes:
        train_loss: the training loss summed since the last evaluation (not a mean).
        e_w: mean ``|w − h(w)|`` over all target elements.
        delta_w: mean ``(w − h(w))²``.
        losses: ``(loss_pre, loss_post)`` at a measured event, else None.
    """

    train_loss: float
    e_w: float
    delta_w: float
    losses: tuple[float, float] | None

    @classmethod
    def read(
        cls,
        loss_sum: torch.Tensor,
        sums: Sequence[torch.Tensor],
        n: int,
        probe_losses: Sequence[torch.Tensor] = (),
    ) -> EventNumbers:
        """All numbers of an event in one device sync (``sums`` and ``n`` from
        :func:`distort_targets`, ``probe_losses`` the probe losses before and after, if
        measured)."""
        train_loss, *values = torch.stack([loss_sum, *sums, *probe_losses]).tolist()
        losses = values[len(sums) :]
        return cls(
            train_loss=train_loss,
            e_w=math.fsum(values[0 : len(sums) : 2]) / n,
            delta_w=math.fsum(values[1 : len(sums) : 2]) / n,
            losses=(losses[0], losses[1]) if losses else None,
        )

    def metrics(self, pnr: int) -> dict[str, float]:
        """What ``on_distortion`` reports (see :class:`trainers.callbacks.Callback`)."""
        out = {"e_w": self.e_w, "e_w_per_pnr": self.e_w / pnr, "delta_w": self.delta_w}
        if self.losses is not None:
            lpre, lpost = self.losses
            out.update(
                loss_pre=lpre,
                loss_post=lpost,
                delta_loss_ratio=(lpost - lpre) / lpre if lpre != 0 else 0.0,
            )
        return out
