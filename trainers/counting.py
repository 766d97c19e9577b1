"""Counting parameters and multiply-accumulates (MACs) of a model on one input.

One counter serves the dense training model (:class:`~trainers.loop.Trainer`'s ``macs_dense``)
and the exported compressed one (:func:`trainers.export.compression_report`): a single forward
pass of one zero sample with a hook on every layer that multiplies. Conv2d, Linear and LSTM
layers are counted from their shapes; a layer class of this project that ``torch.nn`` does
not know (e.g. the tiled low-rank layers of :mod:`trainers.distortions.layers`) counts itself
through ``forward_macs(output) -> int``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """All parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _lstm_macs(mod: nn.LSTM, output: Any) -> int:
    out = output[0]
    steps = out.numel() // out.shape[-1]  # batch·time positions
    per_step = 0
    for layer in range(mod.num_layers):
        in_size = mod.input_size if layer == 0 else mod.hidden_size
        per_step += 4 * mod.hidden_size * (in_size + mod.hidden_size)
    return steps * per_step


def forward_macs(mod: nn.Module, output: Any) -> int | None:
    """MACs of the forward call of ``mod`` that produced ``output``; None for a layer that does
    no multiply-accumulates of its own (containers, activations, norms, pooling)."""
    own = getattr(mod, "forward_macs", None)
    if callable(own):
        return int(own(output))
    if isinstance(mod, nn.Conv2d):
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        return int(output.numel() * k)
    if isinstance(mod, nn.Linear):
        return int(output.numel() * mod.in_features)
    if isinstance(mod, nn.LSTM):
        return _lstm_macs(mod, output)
    return None


def _counts(mod: nn.Module) -> bool:
    return callable(getattr(mod, "forward_macs", None)) or isinstance(
        mod, nn.Conv2d | nn.Linear | nn.LSTM
    )


def layer_macs(
    model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> dict[str, int]:
    """MACs of every layer (by module name) for ONE sample of shape ``input_shape``.

    Measured with forward hooks, so any structure (decomposed layers, residual blocks) counts
    what actually runs, and a layer called twice counts twice. Integer inputs (token ids, for
    language models) are given as ``dtype`` ``torch.long``.
    """
    macs: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            macs[name] = macs.get(name, 0) + (forward_macs(mod, output) or 0)

        return fn

    handles = [
        mod.register_forward_hook(hook(name)) for name, mod in model.named_modules() if _counts(mod)
    ]
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
