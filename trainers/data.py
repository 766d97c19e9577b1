"""Datasets as reproducible batch sources.

Every dataset is loaded through :func:`load_dataset` into a :class:`DataSplits`: train,
validation and test :class:`BatchSource` objects plus a :class:`DataInfo` describing one sample.
A batch source yields the batches of an epoch in an order that depends only on
``(seed, epoch)`` and never touches torch's global RNG, so a run resumed at batch ``start`` of
an epoch sees exactly the batches the uninterrupted run would have seen.

**Validation split.** Trials are compared, and sweeps select, on validation data; the test
split only reports. The validation set is a hold-out of ``val_fraction`` of the training set
(``round(val_fraction * n)`` samples, at least one), carved with a fixed seed
(:data:`VAL_SPLIT_SEED`) that does not depend on the run's seed, so every trial of a sweep
validates on the same samples. For classification the hold-out is stratified: each class gives
its share (largest remainders settle the rounding). Language-model data (sequences) gets a
random hold-out of whole sequences; Penn Treebank uses its own ``ptb.valid.txt`` instead (any
``val_fraction > 0`` selects it). ``limit_train`` applies first: the hold-out is carved from
the first ``limit_train`` training samples. ``val_fraction = 0`` gives no validation split
(``DataSplits.val`` is None), e.g. to train a final model on train + validation.

Small datasets live in memory as tensors (:class:`TensorBatches`); ImageNet streams through a
``DataLoader`` (:class:`LoaderBatches`). This module is the entry point: the registry of
datasets and :func:`load_dataset`; the types and batch sources are in :mod:`trainers.batches`,
the loaders and the IDX reader in :mod:`trainers.datasets` (all re-exported here).
"""

from __future__ import annotations

from typing import Any

from trainers.batches import (
    DEFAULT_VAL_FRACTION,
    VAL_SPLIT_SEED,
    BatchSource,
    DataInfo,
    DataSplits,
    LoaderBatches,
    TensorBatches,
    epoch_generator,
    holdout,
    mix_seed,
    random_crop_flip,
)
from trainers.datasets import LOADERS, CommonOptions, read_idx
from trainers.registry import Registry

__all__ = [
    "DATASETS",
    "DEFAULT_VAL_FRACTION",
    "VAL_SPLIT_SEED",
    "BatchSource",
    "DataInfo",
    "DataSplits",
    "LoaderBatches",
    "TensorBatches",
    "dataset_options",
    "epoch_generator",
    "holdout",
    "load_dataset",
    "mix_seed",
    "random_crop_flip",
    "read_idx",
]

# The first parameter of every loader is the CommonOptions load_dataset builds: not an option.
DATASETS: Registry[Any] = Registry("dataset", LOADERS, skip=1)


def dataset_options(name: str) -> list[str]:
    """Dataset-specific option names accepted by ``load_dataset(name, **options)``."""
    return DATASETS.options(name)


def load_dataset(
    name: str,
    *,
    batch_size: int,
    test_batch_size: int = 1000,
    root: str | None = None,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    device: str = "cpu",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    **options: Any,
) -> DataSplits:
    """Load dataset ``name`` as train/validation/test batch sources.

    Args:
        name: A key of :data:`DATASETS`.
        batch_size: Training batch size (the train source drops the last partial batch).
        test_batch_size: Test batch size (the test source keeps its last partial batch).
        root: Directory holding the data files (layout depends on the dataset).
        download: Allow torchvision to download the data (needs network access).
        limit_train: Keep only the first N training samples.
        limit_test: Keep only the first N test samples.
        device: Where in-memory tensors are moved once at load.
        val_fraction: Share of the (limited) training set held out for validation, with a
            fixed seed, stratified by class (see the module docstring); 0 for none.
        **options: Dataset-specific options (see :func:`dataset_options`).

    Raises:
        ValueError: Unknown dataset name or option.
        FileNotFoundError: The data is not where it was looked for (the message says where).
    """
    DATASETS.check(name, options)
    for what, n in (("limit_train", limit_train), ("limit_test", limit_test)):
        if n is not None and n < 1:
            raise ValueError(f"{what} must be >= 1 or None, got {n}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be >= 0 and < 1, got {val_fraction}")
    common = CommonOptions(
        batch_size, test_batch_size, root, download, limit_train, limit_test, device, val_fraction
    )
    splits: DataSplits = DATASETS.create(name, common, **options)
    return splits
