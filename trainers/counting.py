"""Counting parameters and multiply-accumulates (MACs) of a model on one input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """All parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def layer_macs(
    model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> dict[str, int]:
    """MACs of every conv / linear / LSTM layer for ONE sample of shape ``input_shape``.

    Measured with forward hooks, so any structure (decomposed layers, residual blocks) counts
    what actually runs. Integer inputs (token ids, for language models) are given as ``dtype``
    ``torch.long``.
    """
    macs: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
                macs[name] = macs.get(name, 0) + output.numel() * k
            elif isinstance(mod, nn.Linear):
                macs[name] = macs.get(name, 0) + output.numel() * mod.in_features
            elif isinstance(mod, nn.LSTM):
                out = output[0]
                steps = out.numel() // out.shape[-1]  # batch·time positions
                total = 0
                for layer in range(mod.num_layers):
                    in_size = mod.input_size if layer == 0 else mod.hidden_size
                    total += 4 * mod.hidden_size * (in_size + mod.hidden_size)
                macs[name] = macs.get(name, 0) + steps * total

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear | nn.LSTM):
            handles.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.zeros((1, *input_shape), dtype=dtype, device=device)
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def count_macs(
    model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> int:
    """Total MACs for one sample (see :func:`layer_macs`)."""
    return sum(layer_macs(model, input_shape, dtype).values())
