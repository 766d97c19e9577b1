"""Export of a trained (distorted) model in its compressed structure, and its report.

Training never changes the model's structure (occasional regularization): the final weights
are ``h(w)`` and merely *representable* in compressed form. :func:`export` builds that form by
asking the distortion for each target layer's replacement (:meth:`Distortion.export_layer
<trainers.distortions.base.Distortion.export_layer>`): the factorizing methods (SVD, tiled SVD,
Tucker-2) return their factorized layers, the others (pruning, quantization, weight decay,
noise) keep the dense structure (pruning reports its non-zeros in :func:`compression_report`).
A new compression method brings its own ``export_layer``; nothing here names a method.

Saving and loading live in :mod:`trainers.serialize`; :func:`save_exported` and
:func:`load_exported` are re-exported here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from trainers.counting import count_macs, count_params
from trainers.distortions.base import Distortion
from trainers.distortions.layers import TiledLowRankConv2d, TiledLowRankLinear
from trainers.serialize import load_exported, save_exported

__all__ = [
    "TiledLowRankConv2d",
    "TiledLowRankLinear",
    "compression_report",
    "count_nonzero",
    "export",
    "load_exported",
    "save_exported",
]


def _like(mod: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` on the device / dtype of ``mod``, in its training mode."""
    p = next(mod.parameters())
    return new.to(device=p.device, dtype=p.dtype).train(mod.training)


def export(model: nn.Module, distortion: Distortion, targets: Sequence[str]) -> nn.Module:
    """A new model with the compressed structure, built from ``model``'s current weights.

    Args:
        model: the trained model; its target weights are (normally) already ``h(w)``. It is
            not modified.
        distortion: the distortion used in training (its knobs give e.g. the ranks / tiles).
        targets: names of the distorted parameters, e.g. ``"layer1.0.conv1.weight"``.

    Each target's layer is replaced by ``distortion.export_layer(layer, weight)`` when that
    returns a module (exact when the weights are already ``h(w)``) and kept otherwise. Raises
    ``ValueError`` naming the target when the distortion cannot restructure its layer (e.g. a
    factorizing method on an LSTM matrix or a grouped conv).
    """
    new = copy.deepcopy(model)
    for target in targets:
        mod_name, _, p_name = target.rpartition(".")
        mod = new.get_submodule(mod_name)
        try:
            with torch.no_grad():
                replacement = distortion.export_layer(mod, mod.get_parameter(p_name).detach())
        except ValueError as e:
            raise ValueError(f"export: target {target!r}: {e}") from None
        if replacement is None:
            continue
        replacement = _like(mod, replacement)
        if not mod_name:  # the target is a parameter of the model itself
            new = replacement
            continue
        parent_name, _, child = mod_name.rpartition(".")
        setattr(new.get_submodule(parent_name), child, replacement)
    return new


# --------------------------------------------------------------------------------------------
# Report


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameter values (what pruning saves in a sparse format)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def compression_report(
    original: nn.Module,
    exported: nn.Module,
    input_shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Params, MACs (one sample of ``input_shape``) and non-zeros before/after compression.

    ``compression_ratio = params_before / params_after``; ``macs_ratio`` likewise;
    ``nnz_ratio = nnz_before / nnz_after`` is the storage gain of pruning (sparse storage).
    """
    params_before, params_after = count_params(original), count_params(exported)
    macs_before = count_macs(original, input_shape, dtype)
    macs_after = count_macs(exported, input_shape, dtype)
    nnz_before, nnz_after = count_nonzero(original), count_nonzero(exported)
    return {
        "params_before": params_before,
        "params_after": params_after,
        "compression_ratio": params_before / max(params_after, 1),
        "macs_before": macs_before,
        "macs_after": macs_after,
        "macs_ratio": macs_before / max(macs_after, 1),
        "nnz_before": nnz_before,
        "nnz_after": nnz_after,
        "nnz_ratio": nnz_before / max(nnz_after, 1),
    }
