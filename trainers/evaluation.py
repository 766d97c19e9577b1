"""Measuring a model during training: split metrics, probe losses, BatchNorm re-estimation.

Validation metrics are what sweeps select on; test metrics are reported only (see
:mod:`trainers.metrics`). Without a validation split (``data.val_fraction: 0``) only the test
metrics appear.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from trainers.data import BatchSource, DataSplits
from trainers.divergence import check_eval_loss


def task_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross entropy for classification ``(B, C)`` and language models ``(B, T, V)`` alike."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def probe_mode(model: nn.Module) -> Iterator[None]:
    """Forward passes that see what training sees (BatchNorm on batch statistics) but change
    nothing: running statistics frozen (momentum 0), dropout off, no gradients."""
    bns = _batchnorms(model)
    saved = [
        (m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in bns
    ]
    was_training = model.training
    model.eval()
    for m in bns:
        m.train()
        m.momentum = 0.0
    try:
        with torch.no_grad():
            yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                cast(torch.Tensor, m.num_batches_tracked).copy_(tracked)
        model.train(was_training)


@torch.no_grad()
def evaluate_split(
    model: nn.Module, data: DataSplits, split: str, seed: int, device: torch.device
) -> tuple[float, float]:
    """(accuracy, mean loss) of ``model`` on the ``"val"`` or ``"test"`` split, in eval mode."""
    source = {"val": data.val, "test": data.test}.get(split)
    if source is None:
        raise ValueError(
            f"no {split!r} split to evaluate on"
            + ("; set data.val_fraction > 0" if split == "val" else "; use 'val' or 'test'")
        )
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    count = 0
    for x, y in source.epoch(0, seed):
        out = model(x)
        flat_out, flat_y = out.reshape(-1, out.shape[-1]), y.reshape(-1)
        loss += F.cross_entropy(flat_out, flat_y, reduction="sum")
        correct += (flat_out.argmax(dim=1) == flat_y).sum()
        count += flat_y.numel()
    model.train(was_training)
    acc, total = torch.stack([correct, loss]).tolist()
    return acc / max(count, 1), total / max(count, 1)


def split_scores(
    model: nn.Module, data: DataSplits, seed: int, device: torch.device, step: int
) -> dict[str, float]:
    """``val_accuracy``, ``val_loss`` (with a validation split), ``test_accuracy`` and
    ``test_loss`` of ``model`` as it is; a non-finite loss raises
    :class:`~trainers.divergence.TrainingDiverged`."""
    out: dict[str, float] = {}
    for split in ("val", "test"):
        if split == "val" and data.val is None:
            continue
        acc, loss = evaluate_split(model, data, split, seed, device)
        check_eval_loss(split, loss, step)
        out[f"{split}_accuracy"], out[f"{split}_loss"] = acc, loss
    return out


def accuracies(scores: dict[str, float]) -> dict[str, float]:
    """The ``val_accuracy`` / ``test_accuracy`` entries of an evaluation's metrics."""
    return {k: v for k, v in scores.items() if k in ("val_accuracy", "test_accuracy")}


@torch.no_grad()
def reestimate_bn(model: nn.Module, source: BatchSource, seed: int, count: int) -> None:
    """Recompute BatchNorm running statistics (stale after a distortion) on ``count`` fixed
    training batches (from an order no epoch uses)."""
    bns = _batchnorms(model)
    if not bns:
        return
    was_training = model.training
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    for i, (x, _) in enumerate(source.epoch(-2, seed)):
        if i >= count:
            break
        model(x)
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.train(was_training)
