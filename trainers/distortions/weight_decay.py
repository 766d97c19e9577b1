"""Weight decay as a distortion: h(w) = (1 − θ)·w, applied once per distortion event."""

from __future__ import annotations

import torch

from trainers.distortions.base import Distortion, DistortionContext


def decay(w: torch.Tensor, theta: float) -> torch.Tensor:
    """Shrink ``w`` by the factor ``1 − theta``."""
    return w * (1.0 - theta)


class WeightDecay(Distortion):
    """Occasional weight decay with decay factor θ per event (useful θ grows with pNR)."""

    name = "weight_decay"

    def __init__(self, theta: float) -> None:
        if not 0.0 <= theta < 1.0:
            raise ValueError(f"weight_decay: theta must be in [0, 1), got {theta}")
        self.theta = float(theta)

    def distort_tensor(self, name: str, w: torch.Tensor, ctx: DistortionContext) -> torch.Tensor:
        return decay(w, self.theta)
