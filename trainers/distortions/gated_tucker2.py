"""Gated Tucker-2 layers of the funnel method (:mod:`trainers.distortions.funnel`): full-rank
decomposition with weight-norm gates, the MACs that decide keep-or-revert, and compression.

A target conv ``S→T`` becomes ``1×1 S→R_s``, ``d×d core R_s→R_t`` and ``1×1 R_t→T`` (a linear
target three linears, as in :mod:`trainers.distortions.tucker2`); every factor vector is
``g·v/‖v‖`` with a gate ``g`` (``torch.nn.utils.parametrizations.weight_norm``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from trainers.distortions.layers import check_restructurable, conv_args
from trainers.distortions.tucker2 import tucker2_factors, tucker2_ranks


def _three_layers(
    linear: bool, s: int, t: int, r_s: int, r_t: int, geometry: Any, bias: bool
) -> list[nn.Module]:
    """Empty ``S→R_s``, core ``R_s→R_t`` and ``R_t→T`` layers; a conv core takes the kernel size,
    stride, padding and dilation of ``geometry`` (a conv)."""
    if linear:
        return [
            nn.Linear(s, r_s, bias=False),
            nn.Linear(r_s, r_t, bias=False),
            nn.Linear(r_t, t, bias=bias),
        ]
    return [
        nn.Conv2d(s, r_s, 1, bias=False),
        nn.Conv2d(r_s, r_t, geometry.kernel_size, bias=False, **conv_args(geometry)),
        nn.Conv2d(r_t, t, 1, bias=bias),
    ]


def _dense_layer(linear: bool, s: int, t: int, geometry: Any, bias: bool) -> nn.Module:
    if linear:
        return nn.Linear(s, t, bias=bias)
    return nn.Conv2d(s, t, geometry.kernel_size, bias=bias, **conv_args(geometry))


def _dims(seq: nn.Sequential) -> tuple[bool, int, int]:
    """``(is linear, S, T)`` of a three-layer decomposition."""
    first, _, last = cast(Any, seq)
    if isinstance(first, nn.Linear):
        return True, first.in_features, last.out_features
    return False, first.in_channels, last.out_channels


def _like(new: nn.Module, ref: torch.Tensor, training: bool) -> nn.Module:
    return new.to(device=ref.device, dtype=ref.dtype).train(training)


def decompose_gated(module: nn.Module) -> nn.Sequential:
    """The full-rank Tucker-2 (HOSVD) of a conv / linear layer as three weight-normed layers.

    Computes the same function up to rounding. A factor of zero norm (a kernel whose mode
    unfolding has a lower rank than its size, e.g. a dead channel) is left out: it contributes
    nothing and a zero vector has no direction for weight norm.
    """
    check_restructurable(module, cast(torch.Tensor, module.weight), "funnel")
    linear = isinstance(module, nn.Linear)
    w = cast(torch.Tensor, module.weight).detach()
    with torch.no_grad():
        core, p_s, p_t = tucker2_factors(w.double(), *tucker2_ranks(w.shape, 1.0))
        flat = core.reshape(core.shape[0], core.shape[1], -1)
        n_t, n_s = flat.norm(dim=(1, 2)), flat.norm(dim=(0, 2))
        keep_t = n_t > 1e-7 * n_t.max()
        keep_s = n_s > 1e-7 * n_s.max()
        if not keep_t.any() or not keep_s.any():  # an all-zero kernel: one factor per mode
            keep_t[0] = keep_s[0] = True
        core, p_s, p_t = core[keep_t][:, keep_s], p_s[:, keep_s], p_t[:, keep_t]
        r_t, r_s = core.shape[:2]
        s, t = w.shape[1], w.shape[0]
        layers = _three_layers(linear, s, t, r_s, r_t, module, module.bias is not None)
        if linear:
            values = [p_s.T, core.reshape(r_t, r_s), p_t]
        else:
            values = [p_s.T[..., None, None], core, p_t[..., None, None]]
        for layer, value in zip(layers, values, strict=True):
            cast(torch.Tensor, layer.weight).copy_(value)
        if module.bias is not None:
            cast(torch.Tensor, layers[2].bias).copy_(cast(torch.Tensor, module.bias).detach())
    for layer, dim in zip(layers, (0, 0, 1), strict=True):
        weight_norm(layer, "weight", dim=dim)  # g = ‖v‖ per factor vector
    return _like(nn.Sequential(*layers), w, module.training)  # type: ignore[return-value]


def is_gated(mod: nn.Module) -> bool:
    return (
        isinstance(mod, nn.Sequential)
        and len(mod) == 3
        and all(parametrize.is_parametrized(m, "weight") for m in mod)
    )


def gate_params(seq: nn.Sequential) -> list[nn.Parameter]:
    """The gate parameters ``[g_S, g_core, g_T]`` of a gated layer."""
    return [cast(Any, m).parametrizations.weight.original0 for m in seq]


def layer_gates(seq: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gate values ``(g_S (R_s,), g_core (R_t,), g_T (R_t,))`` of a gated layer."""
    g_s, g_c, g_t = (g.detach().reshape(-1) for g in gate_params(seq))
    return g_s, g_c, g_t


def dense_macs(s: int, t: int, k2: int, pos_in: int, pos_out: int) -> int:
    """MACs of the original layer per sample: ``P_out·S·T·d²`` (``P``: output positions)."""
    return pos_out * s * t * k2


def tucker_macs(s: int, t: int, k2: int, r_s: int, r_t: int, pos_in: int, pos_out: int) -> int:
    """MACs of the decomposed layer per sample: ``P_in·S·R_s + P_out·(R_s·R_t·d² + R_t·T)`` (the
    first ``1×1`` conv runs at the input resolution, before the core's stride)."""
    return pos_in * s * r_s + pos_out * (r_s * r_t * k2 + r_t * t)


def keep_masks(seq: nn.Sequential, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which R_s / R_t indices survive: gate ``|g| ≥ threshold`` (for R_t both the core's and
    the last factor's gate); at least one per mode (the largest gate) always stays."""
    g_s, g_c, g_t = (g.abs() for g in layer_gates(seq))
    keep_s = g_s >= threshold
    both = torch.minimum(g_c, g_t)
    keep_t = both >= threshold
    if not keep_s.any():
        keep_s[g_s.argmax()] = True
    if not keep_t.any():
        keep_t[both.argmax()] = True
    return keep_s, keep_t


def compress_gated(
    seq: nn.Sequential, threshold: float, pos_in: int, pos_out: int
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune one gated layer, fold its gates into the weights, and keep it decomposed only when
    that costs fewer MACs than the dense layer (else fold it back into one dense layer).

    Returns the plain replacement module (no parametrization left) and a summary: full and kept
    ranks, whether it stays decomposed, and both MAC counts (per sample).
    """
    first, core, last = cast(Any, seq)
    linear, s, t = _dims(seq)
    keep_s, keep_t = keep_masks(seq, threshold)
    with torch.no_grad():
        w1 = first.weight.detach()[keep_s]  # the parametrized weight: gates folded in
        w2 = core.weight.detach()[keep_t][:, keep_s]
        w3 = last.weight.detach()[:, keep_t]
    r_s, r_t = int(keep_s.sum()), int(keep_t.sum())
    k2 = 1 if linear else math.prod(core.kernel_size)
    macs_dense = dense_macs(s, t, k2, pos_in, pos_out)
    macs_tucker = tucker_macs(s, t, k2, r_s, r_t, pos_in, pos_out)
    decomposed = macs_tucker < macs_dense
    bias = last.bias is not None
    with torch.no_grad():
        if decomposed:
            layers = _three_layers(linear, s, t, r_s, r_t, core, bias)
            for layer, value in zip(layers, (w1, w2, w3), strict=True):
                cast(torch.Tensor, layer.weight).copy_(value)
            new: nn.Module = nn.Sequential(*layers)
            out = layers[2]
        else:
            a, b, c = w1.double(), w2.double(), w3.double()
            if linear:
                dense = c @ b @ a
            else:
                dense = torch.einsum("tb,baij,as->tsij", c[:, :, 0, 0], b, a[:, :, 0, 0])
            new = out = _dense_layer(linear, s, t, core, bias)
            cast(torch.Tensor, new.weight).copy_(dense)
        if bias:
            cast(torch.Tensor, out.bias).copy_(last.bias.detach())
    summary = {
        "ranks_full": [int(first.weight.shape[0]), int(core.weight.shape[0])],
        "ranks_kept": [r_s, r_t],
        "decomposed": bool(decomposed),
        "macs_dense": int(macs_dense),
        "macs_decomposed": int(macs_tucker),
    }
    return _like(new, w1, seq.training), summary


def compressed_skeleton(seq: nn.Sequential, summary: Mapping[str, Any]) -> nn.Module:
    """An (uninitialised) module of the structure :func:`compress_gated` made of ``seq``."""
    _, core, last = cast(Any, seq)
    linear, s, t = _dims(seq)
    bias = last.bias is not None
    if summary["decomposed"]:
        new: nn.Module = nn.Sequential(
            *_three_layers(linear, s, t, *summary["ranks_kept"], core, bias)  # type: ignore[call-arg]
        )
    else:
        new = _dense_layer(linear, s, t, core, bias)
    return _like(new, next(seq.parameters()), seq.training)
