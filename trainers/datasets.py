"""The dataset loaders behind :func:`trainers.data.load_dataset`, and the IDX file reader.

Each loader takes the :class:`CommonOptions` of every dataset plus its own keyword options
(its signature is what config validation checks) and returns :class:`DataSplits`.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Subset

from trainers.batches import (
    DEFAULT_VAL_FRACTION,
    DataInfo,
    DataSplits,
    LoaderBatches,
    TensorBatches,
    holdout,
    random_crop_flip,
)
from trainers.inputs import RawInput

__all__ = ["FASHION_MNIST_SYSTEM_DIR", "LOADERS", "CommonOptions", "read_idx"]

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
# Loaders


@dataclass
class CommonOptions:
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
    cfg: CommonOptions,
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


def _load_digits(cfg: CommonOptions) -> DataSplits:
    """scikit-learn's 1797 8x8 digits: fixed stratified 1437/360 split, no download."""
    # scikit-learn and torchvision are imported on use, here and below: each adds seconds to
    # importing trainers/, and a run loads one dataset.
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
    cfg: CommonOptions,
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


def _load_fashion_mnist(cfg: CommonOptions) -> DataSplits:
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


def _load_mnist(cfg: CommonOptions) -> DataSplits:
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


def _load_cifar10(cfg: CommonOptions, augment: bool = False) -> DataSplits:
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


def _load_imagenet(
    cfg: CommonOptions, image_size: int = 224, workers: int | None = None
) -> DataSplits:
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
    cfg: CommonOptions,
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
    cfg: CommonOptions,
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


def _load_ptb(cfg: CommonOptions, seq_len: int = 35) -> DataSplits:
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


# name -> loader(common options, **its own options); trainers.data registers them by name.
LOADERS: dict[str, Callable[..., DataSplits]] = {
    "digits": _load_digits,
    "fashion_mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "imagenet": _load_imagenet,
    "synthetic": _load_synthetic,
    "synthetic_text": _load_synthetic_text,
    "ptb": _load_ptb,
}
