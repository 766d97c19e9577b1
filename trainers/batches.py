"""Datasets' public types and their reproducible batch sources.

:class:`DataInfo` describes one sample, :class:`DataSplits` holds a dataset's train, validation
and test :class:`BatchSource` objects. A batch source yields the batches of an epoch in an
order that depends only on ``(seed, epoch)`` and never touches torch's global RNG, so a run
resumed at batch ``start`` of an epoch sees exactly the batches the uninterrupted run would
have seen. :func:`holdout` carves the fixed validation split (see :mod:`trainers.data`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from trainers.inputs import RawInput
from trainers.validation import ConfigError

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "VAL_SPLIT_SEED",
    "BatchSource",
    "DataInfo",
    "DataSplits",
    "LoaderBatches",
    "TensorBatches",
    "batch_size_problem",
    "epoch_generator",
    "holdout",
    "mix_seed",
    "random_crop_flip",
]

# The validation hold-out's seed: fixed, so that it never depends on a run's seed.
VAL_SPLIT_SEED = 20_240_917
DEFAULT_VAL_FRACTION = 0.1


# --------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class DataInfo:
    """What one sample looks like.

    Attributes:
        input_shape: Shape of one input sample, e.g. ``(1, 28, 28)``, or ``(35,)`` for tokens.
        num_classes: Number of classes, or the vocabulary size for language modelling.
        task: ``"classification"`` or ``"language_model"``.
        input_dtype: ``torch.float32`` for images, ``torch.long`` for token ids.
        raw: the samples' format before preprocessing, for models handed to users (None:
            the inputs are used as they come).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    task: str = "classification"
    input_dtype: torch.dtype = torch.float32
    raw: RawInput | None = None


@runtime_checkable
class BatchSource(Protocol):
    """A reproducible source of ``(inputs, targets)`` batches."""

    def __len__(self) -> int:
        """Batches per epoch."""
        ...

    def epoch(self, epoch: int, seed: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of ``epoch`` in an order fixed by ``(seed, epoch)``, skipping ``start``."""
        ...


@dataclass
class DataSplits:
    """Train, validation (None without a validation split) and test sources of one dataset."""

    train: BatchSource
    val: BatchSource | None
    test: BatchSource
    info: DataInfo


def mix_seed(seed: int, *keys: int) -> int:
    """One 63-bit seed from ``(seed, *keys)``.

    ``SeedSequence`` mixes the integers, so nearby seeds/epochs give unrelated streams (a plain
    ``seed + epoch`` would make run 1 epoch 0 identical to run 0 epoch 1).
    """
    # Modulo 2**64: SeedSequence rejects negative entries, and a negative seed is still a seed.
    seq = np.random.SeedSequence([int(k) % 2**64 for k in (seed, *keys)])
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, *keys)`` (see :func:`mix_seed`)."""
    return torch.Generator().manual_seed(mix_seed(seed, *keys))


def batch_size_problem(batch_size: int, samples: int) -> str:
    """The problem of a training batch larger than the ``samples`` left to train on."""
    return (
        f"data.batch_size: {batch_size} exceeds the {samples} training samples (after "
        "data.limit_train and the validation hold-out), so an epoch has no batch; lower "
        "data.batch_size or raise data.limit_train"
    )


# --------------------------------------------------------------------------------------------
# Batch sources


class TensorBatches:
    """Batches sliced from in-memory tensors.

    Much faster than a ``DataLoader`` for small data that fits in memory: one ``randperm`` per
    epoch and one fancy-index per batch.

    Args:
        x: Inputs, first dimension indexes samples.
        y: Targets, same first dimension.
        batch_size: Samples per batch.
        shuffle: Reshuffle every epoch (from ``(seed, epoch)``); otherwise fixed order.
        drop_last: Drop the last partial batch.
        transform: Optional ``f(x_batch, generator) -> x_batch`` (e.g. augmentation), given a
            generator seeded from ``(seed, epoch, batch index)`` so skipping batches on resume
            does not shift the random draws of the batches after them.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(x) < batch_size:
            # Bad input (the config's batch size), not a bug: named like a config problem.
            raise ConfigError([batch_size_problem(batch_size, len(x))])
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.transform = transform

    @property
    def num_samples(self) -> int:
        """Samples in the source (before any batch is dropped)."""
        return len(self.x)

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch(self, epoch: int, seed: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of ``epoch`` (shuffled by ``(seed, epoch)`` if enabled) from batch ``start``."""
        idx = None
        if self.shuffle:
            idx = torch.randperm(len(self.x), generator=epoch_generator(seed, epoch))
            idx = idx.to(self.x.device)
        b = self.batch_size
        for i in range(max(start, 0), len(self)):
            if idx is None:
                xb, yb = self.x[i * b : (i + 1) * b], self.y[i * b : (i + 1) * b]
            else:
                sel = idx[i * b : (i + 1) * b]
                xb, yb = self.x[sel], self.y[sel]
            if self.transform is not None:
                xb = self.transform(xb, epoch_generator(seed, epoch, i))
            yield xb, yb


class LoaderBatches:
    """Batches from a map-style dataset through a ``DataLoader`` (for data not held in memory).

    The sampler and the worker seeds come from a generator seeded by ``(seed, epoch)``. With
    ``num_workers=0`` the transforms would run on the main process's global RNG, so each batch is
    fetched under ``torch.random.fork_rng`` with a per-batch seed: the caller's RNG is untouched
    and the augmentation is reproducible too.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        num_workers: int = 0,
        device: str = "cpu",
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_workers = num_workers
        self.device = torch.device(device)

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch(self, epoch: int, seed: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of ``epoch`` from batch ``start`` (earlier batches are loaded and dropped)."""
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            generator=epoch_generator(seed, epoch),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        with torch.random.fork_rng(devices=[]):
            it = iter(loader)
        for i in range(len(self)):
            with torch.random.fork_rng(devices=[]):
                # Only the CPU generator: torch.manual_seed would also reseed CUDA, which
                # fork_rng(devices=[]) does not restore.
                torch.default_generator.manual_seed(mix_seed(seed, epoch, i))
                try:
                    xb, yb = next(it)
                except StopIteration:
                    return
            if i < start:
                continue
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


# --------------------------------------------------------------------------------------------
# Augmentation on tensors


def random_crop_flip(x: Tensor, g: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop with zero ``padding`` and random horizontal flip, per sample.

    Works on a normalised ``(B, C, H, W)`` batch, so the zero padding is the dataset mean rather
    than black; close enough to the usual recipe and it keeps augmentation a pure tensor op.
    """
    n, _, h, w = x.shape
    dev = x.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=g).to(dev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=g).to(dev)
    flip = (torch.rand(n, generator=g) < 0.5).to(dev)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = oy[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = ox[:, None] + torch.arange(w, device=dev)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None]
    # Advanced indices split by a slice put their dims first: result is (B, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# The validation hold-out


def holdout(n: int, fraction: float, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(train indices, validation indices)`` of a fixed hold-out of ``fraction`` of ``n``.

    The hold-out has ``round(fraction * n)`` samples (at least one) and is drawn with
    :data:`VAL_SPLIT_SEED`, never a run's seed. With ``labels`` (one class id per sample) it is
    stratified: each class gives ``fraction`` of its samples, the rounding settled by the
    largest remainders. Both index tensors are sorted, disjoint and cover ``range(n)``.

    Raises:
        ValueError: ``fraction`` outside (0, 1), or nothing left to train on.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1) for a hold-out, got {fraction}")
    n_val = max(1, math.floor(fraction * n + 0.5))
    if n_val >= n:
        raise ValueError(
            f"val_fraction {fraction} of {n} training samples leaves none to train on: "
            "lower data.val_fraction or raise data.limit_train"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    if labels is None:
        val = perm[:n_val]
    else:
        labels = labels.cpu()
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        classes, counts = labels.unique(return_counts=True)
        quota = counts.double() * n_val / n  # sums to n_val exactly
        take = quota.floor().long()
        short = n_val - int(take.sum())
        take[torch.argsort(quota - take, descending=True, stable=True)[:short]] += 1
        in_perm = labels[perm]
        # Each class's first `take` samples in one fixed permutation: stratified and seeded.
        val = torch.cat([perm[in_perm == c][:k] for c, k in zip(classes, take, strict=True)])
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)
