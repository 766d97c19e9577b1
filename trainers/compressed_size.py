"""Params and MACs a distorted model needs in its compressed form, without building that form.

Training never changes the model's structure, so the trainer's final sizes come from what the
distortion says each target would store (:meth:`~trainers.distortions.base.Distortion.
stored_params`) and what fraction of its layer's MACs it would keep (``macs_fraction``), applied
to the dense counts of :mod:`trainers.counting`. :func:`trainers.export.compression_report`
measures the exported model instead; for the factorizing methods both agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainers.counting import count_params, layer_macs
from trainers.distortions import Distortion
from trainers.targets import module_of


@dataclass(frozen=True)
class ModelSize:
    """Dense and compressed sizes of one model (for one sample, for the MACs)."""

    params_dense: int
    params: float
    macs_dense: int
    macs: float

    def metrics(self) -> dict[str, float]:
        """``compression_ratio``, ``params``, ``params_dense``, ``macs``, ``macs_dense``."""
        return {
            "compression_ratio": self.params_dense / self.params if self.params else float("inf"),
            "params": self.params,
            "params_dense": float(self.params_dense),
            "macs": self.macs,
            "macs_dense": float(self.macs_dense),
        }


def compressed_size(
    model: nn.Module,
    distortion: Distortion | None,
    weights: Mapping[str, torch.Tensor],
    input_shape: Sequence[int],
    dtype: torch.dtype,
) -> ModelSize:
    """The sizes of ``model`` whose target ``weights`` (by parameter name) are ``h(w)`` of
    ``distortion`` (None: the model is dense)."""
    dense = count_params(model)
    compressed = float(dense)
    macs_by_layer = layer_macs(model, input_shape, dtype)
    macs_dense = sum(macs_by_layer.values())
    macs = float(macs_dense)
    if distortion is not None:
        fractions: dict[str, list[tuple[float, int]]] = {}
        for name, w in weights.items():
            compressed += distortion.stored_params(name, w) - w.numel()
            fractions.setdefault(module_of(name), []).append(
                (distortion.macs_fraction(name, w), w.numel())
            )
        # A layer with several targets keeps the element-weighted mean of their fractions.
        for mod, fr in fractions.items():
            frac = sum(f * n for f, n in fr) / sum(n for _, n in fr)
            macs -= (1.0 - frac) * macs_by_layer.get(mod, 0)
    return ModelSize(dense, compressed, macs_dense, macs)
