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
``DataLoader`` (:class:`LoaderBatches`).
"""

from __future__ import annotations

import gzip
import inspect
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from trainers.inputs import RawInput

__all__ = [
    "DATASETS",
    "BatchSource",
    "DataInfo",
    "DataSplits",
    "LoaderBatches",
    "TensorBatches",
    "dataset_options",
    "epoch_generator",
    "holdout",
    "mix_seed",
    "random_crop_flip",
    "load_dataset",
    "read_idx",
]

# Debian's `dataset-fashion-mnist` package installs the four IDX .gz files here.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_STATS = (0.1307, 0.3081)
_FASHION_STATS = (0.2860, 0.3530)
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
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
            # Zero batches per epoch would make a training loop silently do nothing.
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(x)} training samples: "
                "lower batch_size or raise limit_train"
            )
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
# File readers


_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped if the name ends in ``.gz``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {arr.size} values")
    return arr.reshape(dims)


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    """First directory holding all four IDX files (``.gz`` or extracted)."""
    for d in candidates:
        if all(_idx_path(d, stem) is not None for stem in _IDX_FILES.values()):
            return d
    return None


def _idx_path(d: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (d / name).is_file():
            return d / name
    return None


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


# --------------------------------------------------------------------------------------------
# Loaders


@dataclass
class _Config:
    """Options common to every dataset."""

    batch_size: int
    test_batch_size: int
    root: str | None
    download: bool
    limit_train: int | None
    limit_test: int | None
    device: str
    val_fraction: float = DEFAULT_VAL_FRACTION


def _limit(a: Any, n: int | None) -> Any:
    return a if n is None else a[:n]


def _tensor_splits(
    cfg: _Config,
    xtr: Tensor,
    ytr: Tensor,
    xte: Tensor,
    yte: Tensor,
    info: DataInfo,
    transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    val: tuple[Tensor, Tensor] | None = None,
) -> DataSplits:
    """Apply the limits, carve the validation hold-out from the (limited) training set, move to
    the device once, and wrap as train/validation/test sources.

    ``val`` is a dataset's own validation set (PTB), used instead of a hold-out when
    ``cfg.val_fraction > 0``.
    """
    xtr, ytr = _limit(xtr, cfg.limit_train), _limit(ytr, cfg.limit_train)
    xte, yte = _limit(xte, cfg.limit_test), _limit(yte, cfg.limit_test)
    xva = yva = None
    if cfg.val_fraction > 0 and val is not None:
        xva, yva = val
    elif cfg.val_fraction > 0:
        labels = ytr if info.task == "classification" else None
        tr, va = holdout(len(xtr), cfg.val_fraction, labels)
        xva, yva, xtr, ytr = xtr[va], ytr[va], xtr[tr], ytr[tr]
    dev = torch.device(cfg.device)
    train = TensorBatches(
        xtr.contiguous().to(dev),
        ytr.contiguous().to(dev),
        cfg.batch_size,
        shuffle=True,
        drop_last=True,
        transform=transform,
    )
    valid = None
    if xva is not None:
        valid = TensorBatches(
            xva.contiguous().to(dev), cast(Tensor, yva).contiguous().to(dev), cfg.test_batch_size
        )
    test = TensorBatches(xte.contiguous().to(dev), yte.contiguous().to(dev), cfg.test_batch_size)
    return DataSplits(train=train, val=valid, test=test, info=info)


def _load_digits(cfg: _Config) -> DataSplits:
    """scikit-learn's 1797 8x8 digits: fixed stratified 1437/360 split, no download."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    raw = RawInput(
        shape=(64,), dtype="float64", divisor=16.0, mean=(float(mean),), std=(float(std),),
        description="8x8 digit images as 64 pixel values 0-16 (sklearn.datasets.load_digits)",
    )  # fmt: skip
    info = DataInfo(input_shape=(1, 8, 8), num_classes=10, raw=raw)
    return _tensor_splits(
        cfg,
        torch.from_numpy(xtr).reshape(-1, 1, 8, 8),
        torch.from_numpy(ytr).long(),
        torch.from_numpy(xte).reshape(-1, 1, 8, 8),
        torch.from_numpy(yte).long(),
        info,
    )


def _load_idx_dataset(
    cfg: _Config,
    name: str,
    candidates: list[Path],
    stats: tuple[float, float],
    tv_class: str,
    tv_raw: Path | None,
    hint: str,
) -> DataSplits:
    """MNIST-format data: the first candidate dir with all IDX files, else a download."""
    d = _find_idx_dir(candidates)
    if d is None and cfg.download and tv_raw is not None:
        import torchvision

        getattr(torchvision.datasets, tv_class)(cfg.root, train=True, download=True)
        getattr(torchvision.datasets, tv_class)(cfg.root, train=False, download=True)
        d = _find_idx_dir([tv_raw])
    if d is None:
        tried = "\n".join(f"  {c}" for c in candidates)
        raise FileNotFoundError(
            f"{name}: no directory with {', '.join(s + '[.gz]' for s in _IDX_FILES.values())}. "
            f"Tried:\n{tried}\n{hint}"
        )

    def load(images: str, labels: str, limit: int | None) -> tuple[Tensor, Tensor]:
        x = _limit(read_idx(cast(Path, _idx_path(d, _IDX_FILES[images]))), limit)
        y = _limit(read_idx(cast(Path, _idx_path(d, _IDX_FILES[labels]))), limit)
        xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
        return (xt - stats[0]) / stats[1], torch.from_numpy(y.astype(np.int64))

    xtr, ytr = load("train_images", "train_labels", cfg.limit_train)
    xte, yte = load("test_images", "test_labels", cfg.limit_test)
    raw = RawInput(
        shape=tuple(xtr.shape[2:]), dtype="uint8", divisor=255.0, mean=(stats[0],),
        std=(stats[1],), description=f"{name} images as uint8 pixel values 0-255 (IDX files)",
    )  # fmt: skip
    info = DataInfo(input_shape=tuple(xtr.shape[1:]), num_classes=10, raw=raw)
    return _tensor_splits(cfg, xtr, ytr, xte, yte, info)


def _load_fashion_mnist(cfg: _Config) -> DataSplits:
    """Fashion-MNIST from IDX files in ``root`` or ``root/FashionMNIST/raw``; without a root,
    Debian's copy."""
    # An explicit root is authoritative: a wrong root is an error, not a silent fallback.
    tv_raw = None
    if cfg.root:
        tv_raw = Path(cfg.root) / "FashionMNIST" / "raw"
        candidates = [Path(cfg.root), tv_raw]
    else:
        candidates = [Path(FASHION_MNIST_SYSTEM_DIR)]
    hint = (
        "Get it with `apt-get install dataset-fashion-mnist` (installs to "
        f"{FASHION_MNIST_SYSTEM_DIR}), or set root to a directory holding the IDX files "
        "(or a torchvision root with FashionMNIST/raw/), or pass download: true with a root "
        "and network access."
    )
    return _load_idx_dataset(
        cfg, "fashion_mnist", candidates, _FASHION_STATS, "FashionMNIST", tv_raw, hint
    )


def _load_mnist(cfg: _Config) -> DataSplits:
    """MNIST from IDX files in ``root`` or ``root/MNIST/raw`` (torchvision download if asked)."""
    if not cfg.root:
        raise FileNotFoundError(
            "mnist: no root given. Set root to a directory holding the MNIST IDX files "
            "(train-images-idx3-ubyte.gz, ...) or a torchvision root with MNIST/raw/; "
            "pass download: true with network access to fetch them there."
        )
    tv_raw = Path(cfg.root) / "MNIST" / "raw"
    hint = (
        "Put the IDX files there (root/ or root/MNIST/raw/), or pass download: true with "
        "network access."
    )
    return _load_idx_dataset(
        cfg, "mnist", [Path(cfg.root), tv_raw], _MNIST_STATS, "MNIST", tv_raw, hint
    )


def _load_cifar10(cfg: _Config, augment: bool = False) -> DataSplits:
    """CIFAR-10 through torchvision into memory; ``augment`` adds random crop + flip."""
    import torchvision

    root = cfg.root
    expected = Path(root) / "cifar-10-batches-py" if root else None
    if not cfg.download and (expected is None or not expected.is_dir()):
        raise FileNotFoundError(
            f"cifar10: tried {expected or '(no root given)'}. Set root to the directory holding "
            "cifar-10-batches-py/ (torchvision layout), or pass download: true with a root and "
            "network access."
        )
    mean = torch.tensor(_CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR10_STD).view(1, 3, 1, 1)

    def load(train: bool, limit: int | None) -> tuple[Tensor, Tensor]:
        ds = torchvision.datasets.CIFAR10(root, train=train, download=cfg.download)
        x = torch.from_numpy(_limit(ds.data, limit)).permute(0, 3, 1, 2).float() / 255.0
        y = torch.tensor(_limit(ds.targets, limit), dtype=torch.long)
        return (x - mean) / std, y

    xtr, ytr = load(True, cfg.limit_train)
    xte, yte = load(False, cfg.limit_test)
    raw = RawInput(
        shape=(32, 32, 3), dtype="uint8", divisor=255.0, mean=_CIFAR10_MEAN, std=_CIFAR10_STD,
        channels_last=True, description="32x32 RGB images, channels last, uint8 0-255",
    )  # fmt: skip
    info = DataInfo(input_shape=(3, 32, 32), num_classes=10, raw=raw)
    return _tensor_splits(
        cfg, xtr, ytr, xte, yte, info, transform=random_crop_flip if augment else None
    )


def _load_imagenet(cfg: _Config, image_size: int = 224, workers: int | None = None) -> DataSplits:
    """ImageNet as ``ImageFolder`` at ``root/train`` and ``root/val``, standard transforms."""
    import torchvision
    from torchvision import transforms as T

    dirs = [Path(cfg.root or ".") / s for s in ("train", "val")]
    missing = [d for d in dirs if not d.is_dir()]
    if not cfg.root or missing:
        raise FileNotFoundError(
            f"imagenet: tried {', '.join(str(d) for d in dirs) if cfg.root else '(no root given)'}"
            ". Set root to a directory with train/ and val/, one sub-directory of images per "
            "class (torchvision ImageFolder layout). It cannot be downloaded automatically."
        )
    norm = T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    train_tf = T.Compose(
        [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm]
    )
    test_tf = T.Compose(
        [T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm]
    )
    train_ds = torchvision.datasets.ImageFolder(str(dirs[0]), transform=train_tf)
    test_ds = torchvision.datasets.ImageFolder(str(dirs[1]), transform=test_tf)
    num_classes = len(train_ds.classes)
    n = len(train_ds) if cfg.limit_train is None else min(cfg.limit_train, len(train_ds))
    train_idx, val_ds = torch.arange(n), None
    if cfg.val_fraction > 0:
        # Stratified on the folder's class ids; the hold-out is evaluated without augmentation,
        # so it reads the same training folder through the test transforms.
        targets = torch.tensor(train_ds.targets[:n], dtype=torch.long)
        train_idx, val_idx = holdout(n, cfg.val_fraction, targets)
        val_ds = Subset(
            torchvision.datasets.ImageFolder(str(dirs[0]), transform=test_tf), val_idx.tolist()
        )
    train_ds = Subset(train_ds, train_idx.tolist())
    if cfg.limit_test is not None:
        test_ds = Subset(test_ds, range(min(cfg.limit_test, len(test_ds))))
    nw = min(8, os.cpu_count() or 1) if workers is None else workers

    def evaluation(ds: Any) -> LoaderBatches:
        return LoaderBatches(ds, cfg.test_batch_size, False, False, nw, cfg.device)

    return DataSplits(
        train=LoaderBatches(train_ds, cfg.batch_size, True, True, nw, cfg.device),
        val=evaluation(val_ds) if val_ds is not None else None,
        test=evaluation(test_ds),
        info=DataInfo(input_shape=(3, image_size, image_size), num_classes=num_classes),
    )


def _load_synthetic(
    cfg: _Config,
    shape: tuple[int, ...] | list[int] = (1, 8, 8),
    num_classes: int = 10,
    n_train: int = 256,
    n_test: int = 64,
    data_seed: int = 0,
) -> DataSplits:
    """Gaussian inputs labelled by a fixed random linear teacher (so models can beat chance)."""
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(data_seed)
    x = torch.randn(n_train + n_test, *shape, generator=g)
    teacher = torch.randn(int(np.prod(shape)), num_classes, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    info = DataInfo(input_shape=shape, num_classes=num_classes)
    return _tensor_splits(cfg, x[:n_train], y[:n_train], x[n_train:], y[n_train:], info)


def _load_synthetic_text(
    cfg: _Config,
    vocab_size: int = 50,
    seq_len: int = 35,
    n_train: int = 256,
    n_test: int = 64,
    data_seed: int = 0,
) -> DataSplits:
    """Token sequences from a random, peaked Markov chain; targets are the next tokens."""
    g = torch.Generator().manual_seed(data_seed)
    # Peaked rows (low entropy) so a small LM can do clearly better than uniform guessing.
    trans = torch.softmax(3.0 * torch.randn(vocab_size, vocab_size, generator=g), dim=1)
    n = n_train + n_test
    seq = torch.empty(n, seq_len + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab_size, (n,), generator=g)
    for t in range(seq_len):
        seq[:, t + 1] = torch.multinomial(trans[seq[:, t]], 1, generator=g).squeeze(1)
    x, y = seq[:, :-1], seq[:, 1:]
    info = DataInfo(
        input_shape=(seq_len,),
        num_classes=vocab_size,
        task="language_model",
        input_dtype=torch.long,
    )
    return _tensor_splits(cfg, x[:n_train], y[:n_train], x[n_train:], y[n_train:], info)


def _read_words(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [w for line in f for w in [*line.split(), "<eos>"]]


def _load_ptb(cfg: _Config, seq_len: int = 35) -> DataSplits:
    """Penn Treebank (word level) from ``ptb.{train,valid,test}.txt`` in ``root``.

    The vocabulary is built from the training text in order of first appearance; each split is
    one token stream cut into non-overlapping ``seq_len`` windows, targets shifted by one. The
    validation split is PTB's own ``ptb.valid.txt`` (the standard one, so results compare with
    the literature): any ``val_fraction > 0`` selects it, whatever its value; 0 leaves it out.
    """
    root = Path(cfg.root) if cfg.root else None
    names = ("train", "valid", "test") if cfg.val_fraction > 0 else ("train", "test")
    files = {s: root / f"ptb.{s}.txt" for s in names} if root else {}
    missing = [p for p in files.values() if not p.is_file()]
    if root is None or missing:
        raise FileNotFoundError(
            f"ptb: tried {', '.join(map(str, missing)) if root else '(no root given)'}. Set root "
            "to the directory holding ptb.train.txt, ptb.valid.txt and ptb.test.txt (word-level "
            "Penn Treebank, e.g. simple-examples/data/ of Mikolov's archive)."
        )
    train_words = _read_words(files["train"])
    vocab: dict[str, int] = {}
    for w in train_words:
        vocab.setdefault(w, len(vocab))

    def windows(words: list[str]) -> tuple[Tensor, Tensor]:
        unk = vocab.get("<unk>")
        try:
            ids = [vocab[w] if unk is None else vocab.get(w, unk) for w in words]
        except KeyError as e:
            raise ValueError(f"ptb: word {e} not in the training vocabulary") from None
        stream = torch.tensor(ids, dtype=torch.long)
        n = (len(stream) - 1) // seq_len
        x = stream[: n * seq_len].view(n, seq_len)
        y = stream[1 : n * seq_len + 1].view(n, seq_len)
        return x, y

    xtr, ytr = windows(train_words)
    xte, yte = windows(_read_words(files["test"]))
    val = windows(_read_words(files["valid"])) if "valid" in files else None
    info = DataInfo(
        input_shape=(seq_len,),
        num_classes=len(vocab),
        task="language_model",
        input_dtype=torch.long,
    )
    return _tensor_splits(cfg, xtr, ytr, xte, yte, info, val=val)


DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": _load_digits,
    "fashion_mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "imagenet": _load_imagenet,
    "synthetic": _load_synthetic,
    "synthetic_text": _load_synthetic_text,
    "ptb": _load_ptb,
}


def dataset_options(name: str) -> list[str]:
    """Dataset-specific option names accepted by ``load_dataset(name, **options)``."""
    _check_name(name)
    return list(inspect.signature(DATASETS[name]).parameters)[1:]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")


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
    _check_name(name)
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for dataset {name!r}; valid: {valid or 'none'}"
        )
    for what, n in (("limit_train", limit_train), ("limit_test", limit_test)):
        if n is not None and n < 1:
            raise ValueError(f"{what} must be >= 1 or None, got {n}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be >= 0 and < 1, got {val_fraction}")
    cfg = _Config(
        batch_size, test_batch_size, root, download, limit_train, limit_test, device, val_fraction
    )
    return DATASETS[name](cfg, **options)
