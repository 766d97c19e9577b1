"""Rank-r SVD of the lowered weight matrix (DeepTwist §4, pNR paper appendix C).

A conv kernel ``(T, S, d, d)`` is lowered to ``K ∈ R^{T×(S·d·d)}`` (im2col order, the same as
``w.reshape(T, -1)``); a linear weight is already ``(out, in)``. The distortion replaces ``K``
by its best rank-r approximation; the exported layer is ``K ≈ A·B`` with ``A (m×r)`` and
``B (r×n)``, i.e. a ``d×d`` conv ``S→r`` followed by a ``1×1`` conv ``r→T``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainers.distortions.base import Distortion, DistortionContext
from trainers.distortions.layers import check_restructurable, conv_args, copy_bias
from trainers.distortions.lowrank import (
    batched_apply,
    ceil_frac,
    lowered_shape,
    lowrank_approx,
    matrix_problems,
    truncated_svd,
)


def svd_rank(m: int, n: int, rank: int | None, ratio: float | None) -> int:
    """The rank used on an ``m×n`` matrix: ``rank`` or ``max(1, ceil(ratio·min(m, n)))``."""
    if rank is not None:
        return rank
    assert ratio is not None
    return max(1, ceil_frac(ratio * min(m, n)))


def svd_approx(w: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-``rank`` approximation of the lowered matrix of ``w`` (conv or linear)."""
    return svd_approx_batched(w.unsqueeze(0), rank)[0]


def svd_approx_batched(ws: torch.Tensor, rank: int) -> torch.Tensor:
    """:func:`svd_approx` on a stack ``(L, *shape)`` of same-shape weights, one SVD call."""
    mats = ws.reshape(ws.shape[0], ws.shape[1], -1)
    if not 1 <= rank <= min(mats.shape[-2:]):
        raise ValueError(
            f"svd: rank {rank} is impossible on a lowered {mats.shape[-2]}×{mats.shape[-1]} matrix"
        )
    return lowrank_approx(mats, rank).reshape(ws.shape)


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``A (m×r)``, ``B (r×n)`` of the rank-``rank`` lowered matrix, ``A·B ≈ K``."""
    a, b = truncated_svd(w.reshape(w.shape[0], -1), rank)
    return a.to(w.dtype), b.to(w.dtype)


class SVD(Distortion):
    """Best rank-r approximation of every target's lowered matrix.

    Args:
        rank: the rank r, the same for every layer; or
        ratio: r = max(1, ceil(ratio·min(m, n))) per layer, ratio in (0, 1].

    Exactly one of ``rank`` and ``ratio`` is given.
    """

    name = "svd"

    def __init__(self, rank: int | None = None, ratio: float | None = None) -> None:
        if (rank is None) == (ratio is None):
            raise ValueError("svd: give exactly one of rank (int ≥ 1) or ratio (in (0, 1])")
        if rank is not None and (isinstance(rank, bool) or int(rank) != rank or rank <= 0):
            raise ValueError(f"svd: rank must be a positive integer, got {rank!r}")
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ValueError(f"svd: ratio must be in (0, 1], got {ratio!r}")
        self.rank = None if rank is None else int(rank)
        self.ratio = None if ratio is None else float(ratio)

    def layer_rank(self, w: torch.Tensor) -> int:
        """The rank this distortion uses on ``w``."""
        m, n = lowered_shape(w)
        return svd_rank(m, n, self.rank, self.ratio)

    def validate(self, weights: Mapping[str, torch.Tensor]) -> list[str]:
        return matrix_problems(weights, "svd", self._rank_problem)

    def _rank_problem(self, name: str, w: torch.Tensor, m: int, n: int) -> str | None:
        r = self.layer_rank(w)
        if r <= min(m, n):
            return None
        return (
            f"svd: layer {name!r} (lowered matrix {m}×{n}) cannot take rank {r} > "
            f"min({m}, {n}) = {min(m, n)}; use rank ≤ {min(m, n)}, a ratio instead of a "
            f"fixed rank, or drop the layer from the targets"
        )

    def apply(
        self, weights: Mapping[str, torch.Tensor], ctx: DistortionContext
    ) -> dict[str, torch.Tensor]:
        # Same-shape layers share the rank, so each shape group is one batched SVD.
        return batched_apply(weights, lambda ws: svd_approx_batched(ws, self.layer_rank(ws[0])))

    def distort_tensor(self, name: str, w: torch.Tensor, ctx: DistortionContext) -> torch.Tensor:
        with torch.no_grad():
            return svd_approx(w.detach(), self.layer_rank(w))

    def stored_params(self, name: str, w: torch.Tensor) -> float:
        m, n = lowered_shape(w)
        return float(self.layer_rank(w) * (m + n))

    def macs_fraction(self, name: str, w: torch.Tensor) -> float:
        # d×d conv S→r plus 1×1 conv r→T at the output resolution: r(m + n) MACs per position.
        return self.stored_params(name, w) / w.numel()

    def export_layer(self, module: Any, weight: torch.Tensor) -> nn.Module:
        """``K ≈ A·B``: conv → ``d×d`` conv ``S→r`` (no bias, original stride / padding /
        dilation) then ``1×1`` conv ``r→T`` (original bias); linear → ``Linear(in, r,
        bias=False)`` then ``Linear(r, out)``."""
        check_restructurable(module, weight, self.name)
        a, b = svd_factors(weight, self.layer_rank(weight))  # (T, r), (r, n)
        r = a.shape[1]
        has_bias = module.bias is not None
        if isinstance(module, nn.Linear):
            first: nn.Linear | nn.Conv2d = nn.Linear(module.in_features, r, bias=False)
            second: nn.Linear | nn.Conv2d = nn.Linear(r, module.out_features, bias=has_bias)
            first.weight.data.copy_(b)
            second.weight.data.copy_(a)
        else:
            first = nn.Conv2d(
                module.in_channels, r, module.kernel_size, bias=False, **conv_args(module)
            )
            second = nn.Conv2d(r, module.out_channels, 1, bias=has_bias)
            first.weight.data.copy_(b.reshape(r, *weight.shape[1:]))
            second.weight.data.copy_(a.reshape(*a.shape, 1, 1))
        copy_bias(second, module)
        return nn.Sequential(first, second)
