"""Tucker-2 decomposition of conv kernels by HOSVD (DeepTwist §3, pNR paper §5).

A kernel ``K (T, S, d, d)`` is approximated on its two channel modes only:

    K̃[t, s, i, j] = Σ_{a, b} C[b, a, i, j] · P^S[s, a] · P^T[t, b]

with ``P^S (S×R_s)`` / ``P^T (T×R_t)`` the leading left singular vectors of the mode-S / mode-T
unfoldings (HOSVD, no HOOI iterations) and the core ``C = K ×_S P^Sᵀ ×_T P^Tᵀ`` stored as a
conv weight ``(R_t, R_s, d, d)``. Ranks: ``R_s = ceil(rc·S)``, ``R_t = ceil(rc·T)``.
The exported layer is ``1×1 conv S→R_s``, ``d×d conv R_s→R_t``, ``1×1 conv R_t→T``.

Linear weights ``(T, S)`` are treated as ``1×1`` kernels (d = 1): the same ranks on both modes,
exported as three linear layers ``S→R_s→R_t→T``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainers.distortions.base import Distortion, DistortionContext
from trainers.distortions.layers import check_restructurable, conv_args, copy_bias
from trainers.distortions.lowrank import (
    batched_apply,
    ceil_frac,
    conv_or_linear_problems,
    leading_left_singular_vectors,
)


def tucker2_ranks(shape: tuple[int, ...] | torch.Size, rc: float) -> tuple[int, int]:
    """``(R_s, R_t) = (ceil(rc·S), ceil(rc·T))`` for a kernel ``(T, S, ...)``.

    Each rank is also capped by the size of the other modes (``R_s ≤ T·d·d``), the rank of
    the mode unfolding: only a degenerate layer (e.g. a linear 84→10 classifier with
    rc > 10/84) hits the cap, and a larger factor would only store null directions.
    """
    t, s = int(shape[0]), int(shape[1])
    hw = math.prod(int(x) for x in shape[2:])
    r_s = max(1, min(ceil_frac(rc * s), t * hw))
    r_t = max(1, min(ceil_frac(rc * t), s * hw))
    return r_s, r_t


def _as_kernels(ws: torch.Tensor) -> torch.Tensor:
    """``(L, T, S, *k)`` with linear weights ``(L, T, S)`` seen as ``(L, T, S, 1)``."""
    return ws.unsqueeze(-1) if ws.dim() == 3 else ws


def tucker2_factors_batched(
    ws: torch.Tensor, rank_s: int, rank_t: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HOSVD on the S and T modes of a stack ``ws (L, T, S, *k)`` of same-shape kernels.

    Returns ``core (L, R_t, R_s, *k)``, ``P_S (L, S, R_s)``, ``P_T (L, T, R_t)`` in float64
    (the factors' columns are orthonormal; their signs and order are arbitrary).
    """
    k = _as_kernels(ws)
    big_l, t, s = k.shape[:3]
    unfold_t = k.reshape(big_l, t, -1)
    unfold_s = k.transpose(1, 2).reshape(big_l, s, -1)
    p_t = leading_left_singular_vectors(unfold_t, rank_t)
    p_s = leading_left_singular_vectors(unfold_s, rank_s)
    kf = k.to(p_t.dtype)
    core = torch.einsum("ltsx,ltb,lsa->lbax", kf.reshape(big_l, t, s, -1), p_t, p_s)
    return core.reshape(big_l, p_t.shape[-1], p_s.shape[-1], *k.shape[3:]), p_s, p_t


def tucker2_approx_batched(ws: torch.Tensor, rank_s: int, rank_t: int) -> torch.Tensor:
    """Tucker-2 (HOSVD) reconstruction ``K̃`` of each kernel of the stack ``ws``."""
    core, p_s, p_t = tucker2_factors_batched(ws, rank_s, rank_t)
    big_l, r_t, r_s = core.shape[:3]
    rec = torch.einsum("lbax,ltb,lsa->ltsx", core.reshape(big_l, r_t, r_s, -1), p_t, p_s)
    return rec.reshape(ws.shape).to(ws.dtype)


def tucker2_factors(
    w: torch.Tensor, rank_s: int, rank_t: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``core (R_t, R_s, d, d)``, ``P_S (S, R_s)``, ``P_T (T, R_t)`` of one kernel (or a
    linear weight, whose core is ``(R_t, R_s, 1)``), in ``w``'s dtype."""
    core, p_s, p_t = tucker2_factors_batched(w.unsqueeze(0), rank_s, rank_t)
    return core[0].to(w.dtype), p_s[0].to(w.dtype), p_t[0].to(w.dtype)


def tucker2_approx(w: torch.Tensor, rank_s: int, rank_t: int) -> torch.Tensor:
    """Tucker-2 (HOSVD) reconstruction of one kernel or linear weight."""
    return tucker2_approx_batched(w.unsqueeze(0), rank_s, rank_t)[0]


class Tucker2(Distortion):
    """Tucker-2 (HOSVD) of every target conv kernel, and of linear weights as 1×1 kernels.

    Args:
        rc: rank fraction R_c in (0, 1]: R_s = ceil(rc·S), R_t = ceil(rc·T).
    """

    name = "tucker2"

    def __init__(self, rc: float) -> None:
        if isinstance(rc, bool) or not 0.0 < rc <= 1.0:
            raise ValueError(f"tucker2: rc must be in (0, 1], got {rc!r}")
        self.rc = float(rc)

    def applies_to(self, name: str, w: torch.Tensor) -> bool:
        # A linear layer as a 1×1 kernel stores more than dense once rc exceeds ~0.45: only
        # convs by default; a linear weight is compressed when targets.include names it.
        return w.dim() == 4

    def validate(self, weights: Mapping[str, torch.Tensor]) -> list[str]:
        return conv_or_linear_problems(weights, "tucker2", "Tucker-2", "(T, S, d, d)")

    def apply(
        self, weights: Mapping[str, torch.Tensor], ctx: DistortionContext
    ) -> dict[str, torch.Tensor]:
        # Same-shape kernels get the same ranks: one batched SVD per mode and shape group.
        def fn(ws: torch.Tensor) -> torch.Tensor:
            return tucker2_approx_batched(ws, *tucker2_ranks(ws.shape[1:], self.rc))

        return batched_apply(weights, fn)

    def distort_tensor(self, name: str, w: torch.Tensor, ctx: DistortionContext) -> torch.Tensor:
        with torch.no_grad():
            return tucker2_approx(w.detach(), *tucker2_ranks(w.shape, self.rc))

    def ranks(self, w: torch.Tensor) -> tuple[int, int]:
        """``(R_s, R_t)`` used on ``w``."""
        return tucker2_ranks(w.shape, self.rc)

    def stored_params(self, name: str, w: torch.Tensor) -> float:
        t, s = w.shape[0], w.shape[1]
        d2 = math.prod(w.shape[2:])
        r_s, r_t = self.ranks(w)
        return float(s * r_s + d2 * r_s * r_t + t * r_t)

    def macs_fraction(self, name: str, w: torch.Tensor) -> float:
        # Exact when the conv keeps the spatial size (stride 1, 'same' padding); with stride 2
        # the first 1×1 conv runs at the input resolution and costs 4× more than counted here.
        # compression_report measures the real MACs of the exported model with hooks.
        return self.stored_params(name, w) / w.numel()

    def export_layer(self, module: Any, weight: torch.Tensor) -> nn.Module:
        """Conv → ``1×1`` conv ``S→R_s``, ``d×d`` core conv ``R_s→R_t`` (original stride,
        padding, dilation), ``1×1`` conv ``R_t→T`` (original bias); linear → three linears
        ``S→R_s→R_t→T``."""
        check_restructurable(module, weight, self.name)
        core, p_s, p_t = tucker2_factors(weight, *self.ranks(weight))
        r_t, r_s = core.shape[:2]
        has_bias = module.bias is not None
        if isinstance(module, nn.Linear):
            layers: list[nn.Linear | nn.Conv2d] = [
                nn.Linear(module.in_features, r_s, bias=False),
                nn.Linear(r_s, r_t, bias=False),
                nn.Linear(r_t, module.out_features, bias=has_bias),
            ]
            weights = [p_s.T, core.reshape(r_t, r_s), p_t]
        else:
            layers = [
                nn.Conv2d(module.in_channels, r_s, 1, bias=False),
                nn.Conv2d(r_s, r_t, module.kernel_size, bias=False, **conv_args(module)),
                nn.Conv2d(r_t, module.out_channels, 1, bias=has_bias),
            ]
            weights = [p_s.T[..., None, None], core, p_t[..., None, None]]
        for layer, wt in zip(layers, weights, strict=True):
            layer.weight.data.copy_(wt)
        copy_bias(layers[-1], module)
        return nn.Sequential(*layers)
