"""Sparse storage of pruned layers: a bit mask of the kept weights plus their values.

A pruned ``Linear`` / ``Conv2d`` stored dense costs 4 bytes per weight however many are zero.
:func:`pack_sparse` replaces each layer whose weight is sparse enough by an equivalent layer
that stores one bit per weight (which are kept) and the kept values, in ``numel/8 + 4·nnz``
bytes, and rebuilds the dense weight exactly when it runs: outputs are bit-identical.
:func:`state_bytes` is what a model's tensors take, the honest size of what is stored.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SparseConv2d", "SparseLinear", "pack_sparse", "state_bytes"]


class _PackedWeight(nn.Module):
    """The weight as ``mask_bits`` (little-endian bits, one per weight) and ``values`` (the
    kept weights in flat order). Plain tensor operations only: traces with ``torch.fx``."""

    mask_bits: torch.Tensor
    values: torch.Tensor
    shifts: torch.Tensor
    bias: torch.Tensor | None

    def _pack(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        flat = weight.detach().reshape(-1)
        keep = flat != 0
        bits = np.packbits(keep.cpu().numpy(), bitorder="little")
        self.weight_shape = tuple(weight.shape)
        self.numel = flat.numel()
        self.register_buffer("mask_bits", torch.from_numpy(bits).to(weight.device))
        self.register_buffer("values", flat[keep].clone())
        self.register_buffer("shifts", torch.arange(8, dtype=torch.uint8, device=weight.device))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def weight(self) -> torch.Tensor:
        bits = torch.bitwise_and(
            torch.bitwise_right_shift(self.mask_bits.unsqueeze(1), self.shifts), 1
        )
        keep = bits.reshape(-1)[: self.numel].bool()
        dense = self.values.new_zeros(self.numel)
        return dense.masked_scatter(keep, self.values).reshape(self.weight_shape)


class SparseLinear(_PackedWeight):
    """A pruned ``nn.Linear`` in sparse storage."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self._pack(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class SparseConv2d(_PackedWeight):
    """A pruned ``nn.Conv2d`` (zero padding) in sparse storage."""

    padding: Any

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__()
        self._pack(layer.weight, layer.bias)
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


def _worth_packing(layer: nn.Module) -> bool:
    if type(layer) not in (nn.Linear, nn.Conv2d):
        return False
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        return False
    w = cast(torch.Tensor, layer.weight)
    sparse_bytes = (w.numel() + 7) // 8 + int(torch.count_nonzero(w)) * w.element_size()
    return sparse_bytes < w.numel() * w.element_size()


def pack_sparse(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Linear / Conv2d whose weight is stored smaller as mask +
    values (below ~97% non-zeros in float32) replaced by :class:`SparseLinear` /
    :class:`SparseConv2d`. ``model`` is not modified; dense layers stay as they are."""
    new = copy.deepcopy(model)
    for name, layer in list(new.named_modules()):
        if not name or not _worth_packing(layer):
            continue
        packed = SparseLinear(layer) if isinstance(layer, nn.Linear) else SparseConv2d(layer)
        packed.train(layer.training)
        parent, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent), child, packed)
    return new


def state_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in ``model``'s state dict (each storage counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total
