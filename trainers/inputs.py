"""A dataset's raw input format, and the module that turns it into what a model was trained on.

The trainer feeds models standardized tensors (``(raw / divisor − mean) / std``, channels
first). A model handed to users must take the data as they have it, e.g. scikit-learn's digits
as 64 pixel values 0–16, or 28×28 uint8 images: :class:`RawInputAdapter` goes in front of the
model and does exactly the trainer's preprocessing, so the pair predicts from raw samples with
the accuracy measured in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class RawInput:
    """How a dataset's samples look before preprocessing.

    Attributes:
        shape: one raw sample, e.g. ``(64,)`` for digits, ``(28, 28)`` for MNIST-style images,
            ``(32, 32, 3)`` for CIFAR-10 (channels last, as torchvision stores it).
        dtype: numpy dtype name of the raw values (``"float64"``, ``"uint8"``).
        divisor: raw values are divided by it first (16 for digits, 255 for 8-bit images).
        mean, std: per channel (or one value), applied after the division.
        channels_last: the raw sample is ``(H, W, C)``.
        description: for people, e.g. "8×8 digit images as 64 values 0–16 (scikit-learn)".
    """

    shape: tuple[int, ...]
    dtype: str
    divisor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False
    description: str = ""


class RawInputAdapter(nn.Module):
    """Raw samples ``(B, *raw.shape)`` (any numeric dtype) → the model's standardized input.

    Made of plain tensor operations on buffers, so it traces (``torch.fx``) and pickles
    without this package.
    """

    divisor: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, raw: RawInput, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.raw_shape = tuple(raw.shape)
        self.input_shape = tuple(input_shape)
        self.channels_last = raw.channels_last
        stat_shape = (1, len(raw.mean), *([1] * (len(input_shape) - 1)))
        self.register_buffer("divisor", torch.tensor(raw.divisor, dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(raw.mean, dtype=torch.float32).view(stat_shape))
        self.register_buffer("std", torch.tensor(raw.std, dtype=torch.float32).view(stat_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).reshape(-1, *self.raw_shape)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = x.reshape(-1, *self.input_shape)
        return (x / self.divisor - self.mean) / self.std


def with_raw_input(
    model: nn.Module, raw: RawInput | None, input_shape: tuple[int, ...]
) -> nn.Module:
    """``model`` behind a :class:`RawInputAdapter` (``model`` itself when ``raw`` is None:
    the dataset's samples are used as they come)."""
    if raw is None:
        return model
    return nn.Sequential(RawInputAdapter(raw, input_shape), model)


def to_raw(x: torch.Tensor, raw: RawInput) -> np.ndarray:
    """Standardized model inputs back in the raw format (the inverse of the adapter), e.g. for
    an input example. Every raw format here is integer-valued (pixel counts and levels), so
    the values are rounded back to exact integers."""
    stat_shape = (1, -1, *([1] * (x.dim() - 2)))
    mean = torch.tensor(raw.mean, dtype=torch.float64).view(stat_shape)
    std = torch.tensor(raw.std, dtype=torch.float64).view(stat_shape)
    y = (x.detach().cpu().double() * std + mean) * raw.divisor
    if raw.channels_last:
        y = y.permute(0, 2, 3, 1)
    out = y.reshape(-1, *raw.shape).numpy().round()
    return out.astype(np.dtype(raw.dtype))
