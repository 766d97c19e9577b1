"""Tests of trainers.data: datasets, batch sources, reproducibility, file readers."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers import data, datasets
from trainers.data import (
    DATASETS,
    BatchSource,
    DataInfo,
    LoaderBatches,
    TensorBatches,
    load_dataset,
    random_crop_flip,
    read_idx,
)


def _batches(source: BatchSource, epoch: int, seed: int, start: int = 0) -> list:
    return [(x.clone(), y.clone()) for x, y in source.epoch(epoch, seed, start)]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    header = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def _write_mnist_like(d: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict:
    """A tiny MNIST-layout dataset in ``d``; returns the raw arrays."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        _write_idx(d / (stem + (".gz" if gz else "")), arr)
    return arrays


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_split_and_normalisation() -> None:
    splits = load_dataset("digits", batch_size=64, test_batch_size=100)
    assert (splits.info.input_shape, splits.info.num_classes) == ((1, 8, 8), 10)
    assert splits.info.raw.shape == (64,) and splits.info.raw.divisor == 16.0  # sklearn's 0-16
    train, val, test = splits.train, splits.val, splits.test
    assert all(isinstance(s, BatchSource) for s in (train, val, test))
    # 1437 training images: 10% (144) held out for validation; the 360 test images untouched
    assert (train.num_samples, val.num_samples, test.num_samples) == (1293, 144, 360)
    assert len(train) == 1293 // 64  # drop_last
    assert len(val) == 2 and len(test) == 4  # 100, 100, 100, 60: last partial batch kept
    x_all = torch.cat([train.x, val.x])
    assert x_all.mean().abs() < 1e-4 and (x_all.std() - 1).abs() < 1e-3
    # Stratified: every class has 36 test and 14-15 validation samples (give or take one).
    counts = torch.bincount(test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    val_counts = torch.bincount(val.y, minlength=10)
    assert val_counts.min() >= 13 and val_counts.max() <= 16
    x, y = next(train.epoch(0, seed=0))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long


def test_digits_split_is_fixed_and_limits_apply() -> None:
    a = load_dataset("digits", batch_size=10, limit_train=50, limit_test=20, val_fraction=0)
    b = load_dataset("digits", batch_size=10, val_fraction=0)
    assert a.val is None and b.val is None
    assert a.train.num_samples == 50 and a.test.num_samples == 20
    assert torch.equal(a.train.x, b.train.x[:50]) and torch.equal(a.test.y, b.test.y[:20])


# --------------------------------------------------------------------------------------------
# the validation hold-out


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.flatten(1).tolist()}


def test_holdout_is_fixed_stratified_disjoint_and_complete() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100)]
    train, val = data.holdout(100, 0.1, labels)
    assert len(val) == 10 and len(train) == 90
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(100))
    assert torch.bincount(labels[val], minlength=3).tolist() == [5, 3, 2]  # 10% of each class
    again = data.holdout(100, 0.1, labels)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    # rounding: 0.25 of 10 samples is 2.5 -> 3; shares by largest remainder: 7 a / 3 b -> 2 / 1
    tr, va = data.holdout(10, 0.25, torch.tensor([0] * 7 + [1] * 3))
    assert len(va) == 3 and torch.bincount(torch.tensor([0] * 7 + [1] * 3)[va]).tolist() == [2, 1]
    with pytest.raises(ValueError, match="leaves none to train on"):
        data.holdout(1, 0.5)


def test_validation_split_sizes_disjointness_and_stratification() -> None:
    full = load_dataset("synthetic", batch_size=16, n_train=300, n_test=50, val_fraction=0)
    splits = load_dataset("synthetic", batch_size=16, n_train=300, n_test=50, val_fraction=0.2)
    train, val = splits.train, splits.val
    assert (train.num_samples, val.num_samples, splits.test.num_samples) == (240, 60, 50)
    assert torch.equal(splits.test.x, full.test.x)  # the test set is never touched
    # disjoint, and together exactly the training set (the inputs are distinct Gaussian draws)
    assert not _rows(train.x) & _rows(val.x)
    assert _rows(train.x) | _rows(val.x) == _rows(full.train.x)
    # each class gives 20% of its samples (within one, from rounding)
    per_class = torch.bincount(full.train.y, minlength=10).double() * 0.2
    assert (torch.bincount(val.y, minlength=10) - per_class).abs().max() < 1


def test_validation_split_does_not_depend_on_the_run_seed(tiny_config) -> None:
    from trainers.loop import Trainer

    a = Trainer(tiny_config(run={"seed": 0})).data
    b = Trainer(tiny_config(run={"seed": 7})).data
    assert (
        a.val.num_samples == 14 and torch.equal(a.val.x, b.val.x) and torch.equal(a.val.y, b.val.y)
    )
    assert not _same(_batches(a.train, 0, 0), _batches(b.train, 0, 7))  # the seed still shuffles


def test_limit_train_applies_before_the_split() -> None:
    whole = load_dataset("digits", batch_size=10, val_fraction=0)
    limited = load_dataset("digits", batch_size=10, limit_train=200, val_fraction=0.1)
    assert limited.train.num_samples == 180 and limited.val.num_samples == 20
    assert _rows(limited.train.x) | _rows(limited.val.x) == _rows(whole.train.x[:200])


def test_val_fraction_zero_keeps_every_training_sample() -> None:
    splits = load_dataset("synthetic", batch_size=16, val_fraction=0)
    assert splits.val is None and splits.train.num_samples == 256
    with pytest.raises(ValueError, match="val_fraction must be >= 0 and < 1"):
        load_dataset("synthetic", batch_size=16, val_fraction=1.0)


# --------------------------------------------------------------------------------------------
# TensorBatches


def _source(n: int = 50, batch_size: int = 8, **kw) -> TensorBatches:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return TensorBatches(x, torch.arange(n), batch_size, **kw)


def test_tensor_batches_same_seed_epoch_same_batches() -> None:
    src = _source(shuffle=True, drop_last=True)
    assert len(src) == 6
    a, b = _batches(src, 3, 7), _batches(src, 3, 7)
    assert _same(a, b)
    assert not _same(a, _batches(src, 4, 7))  # another epoch, another order
    assert not _same(a, _batches(src, 3, 8))  # another seed, another order
    # A shuffled epoch is a permutation: no sample twice, x and y stay paired.
    ys = torch.cat([y for _, y in a])
    assert len(ys.unique()) == 48
    assert all(torch.equal(x.squeeze(1).long(), y) for x, y in a)


def test_tensor_batches_start_skips_exactly() -> None:
    src = _source(shuffle=True, drop_last=True)
    full = _batches(src, 2, 0)
    for start in (0, 1, 5, 6, 10):
        assert _same(_batches(src, 2, 0, start=start), full[start:])


def test_tensor_batches_leave_global_rng_alone() -> None:
    src = _source(
        shuffle=True, drop_last=True, transform=lambda x, g: x + torch.rand(1, generator=g)
    )
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = _batches(src, 0, 1)
    assert torch.equal(torch.get_rng_state(), state)
    # ...and the global RNG does not influence the batches either.
    torch.manual_seed(999)
    assert _same(a, _batches(src, 0, 1))


def test_tensor_batches_transform_is_reproducible_under_start() -> None:
    src = _source(
        shuffle=True, drop_last=True, transform=lambda x, g: x + torch.rand(1, generator=g)
    )
    full = _batches(src, 1, 5)
    assert _same(_batches(src, 1, 5, start=2), full[2:])


def test_tensor_batches_test_order_fixed_and_last_partial_kept() -> None:
    src = _source(n=50, batch_size=8)
    assert len(src) == 7
    batches = _batches(src, 0, 0)
    assert _same(batches, _batches(src, 9, 4))  # no shuffle: epoch and seed do not matter
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(50))
    assert len(batches[-1][1]) == 2


def test_tensor_batches_rejects_batch_larger_than_train_set() -> None:
    with pytest.raises(ValueError, match="limit_train"):
        _source(n=5, batch_size=8, shuffle=True, drop_last=True)


def test_random_crop_flip() -> None:
    x = torch.randn(16, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out = random_crop_flip(x, g1)
    assert out.shape == x.shape
    assert torch.equal(out, random_crop_flip(x, g2))
    # Without padding only the flip remains: each sample is itself or its mirror image.
    out = random_crop_flip(x, torch.Generator().manual_seed(1), padding=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()


# --------------------------------------------------------------------------------------------
# LoaderBatches (the DataLoader-backed source used for ImageNet)


class _NoisyDataset(torch.utils.data.Dataset):
    """Uses the global RNG in __getitem__, as torchvision's random transforms do."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((2,), float(i)) + torch.rand(2), i


def test_loader_batches_reproducible_and_rng_untouched() -> None:
    src = LoaderBatches(_NoisyDataset(), batch_size=6, shuffle=True, drop_last=True)
    assert len(src) == 3
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = _batches(src, 1, 3)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same(a, _batches(src, 1, 3))
    assert _same(_batches(src, 1, 3, start=2), a[2:])
    assert not _same(a, _batches(src, 2, 3))


def test_imagenet_folder_layout(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                img = Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8))
                img.save(tmp_path / split / cls / f"{i}.png")
    splits = load_dataset(
        "imagenet", root=str(tmp_path), batch_size=4, test_batch_size=4, image_size=8, workers=0
    )
    assert splits.info == DataInfo(input_shape=(3, 8, 8), num_classes=3)
    assert len(splits.train) == 1 and len(splits.test) == 2
    x, y = next(splits.test.epoch(0, 0))
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 1, 1]
    # 6 training images: one (round(0.6)) held out for validation, through the test transforms
    assert len(splits.train.dataset) == 5 and len(splits.val.dataset) == 1
    held = set(splits.val.dataset.indices)
    assert not held & set(splits.train.dataset.indices)
    xv, _ = next(splits.val.epoch(0, 0))
    assert xv.shape == (1, 3, 8, 8)


def test_imagenet_validation_is_stratified_on_folder_classes(tmp_path: Path) -> None:
    from PIL import Image

    for split, per_class in (("train", 10), ("val", 1)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8)).save(tmp_path / split / cls / f"{i}.png")
    splits = load_dataset("imagenet", root=str(tmp_path), batch_size=2, image_size=8, workers=0,
                          val_fraction=0.2)  # fmt: skip
    held = splits.val.dataset
    assert [held.dataset.targets[i] for i in held.indices] == [0, 0, 1, 1]  # 2 of each class


# --------------------------------------------------------------------------------------------
# synthetic data


def test_synthetic_shapes_and_learnable() -> None:
    splits = load_dataset(
        "synthetic", batch_size=32, shape=(3, 4, 4), num_classes=5, n_train=300, n_test=100
    )
    assert splits.info == DataInfo(input_shape=(3, 4, 4), num_classes=5)
    x, y = next(splits.train.epoch(0, 0))
    assert x.shape == (32, 3, 4, 4) and y.shape == (32,)
    # Labels come from a linear teacher: least squares on one-hot targets beats chance easily.
    xtr, ytr = splits.train.x.flatten(1), splits.train.y
    w = torch.linalg.lstsq(xtr, torch.nn.functional.one_hot(ytr, 5).float()).solution
    acc = ((splits.test.x.flatten(1) @ w).argmax(1) == splits.test.y).float().mean()
    assert acc > 0.5  # chance is 0.2


def test_synthetic_defaults() -> None:
    splits = load_dataset("synthetic", batch_size=16)
    assert splits.info.input_shape == (1, 8, 8) and splits.info.num_classes == 10
    assert splits.train.num_samples == 230 and splits.val.num_samples == 26  # 10% held out
    assert splits.test.num_samples == 64


def test_synthetic_text_shapes_and_targets() -> None:
    splits = load_dataset(
        "synthetic_text", batch_size=8, vocab_size=20, seq_len=12, n_train=40, n_test=10
    )
    info = splits.info
    assert info.task == "language_model" and info.input_dtype == torch.long
    assert info.input_shape == (12,) and info.num_classes == 20
    x, y = next(splits.train.epoch(0, 0))
    assert x.shape == (8, 12) and y.shape == (8, 12) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert int(x.max()) < 20 and int(x.min()) >= 0
    # whole sequences are held out (4 of 40), not tokens
    assert splits.train.num_samples == 36 and splits.val.x.shape == (4, 12)
    assert not _rows(splits.val.x) & _rows(splits.train.x)


def test_ptb_from_text_files(tmp_path: Path) -> None:
    (tmp_path / "ptb.train.txt").write_text(" the cat sat \n the dog <unk> sat \n" * 5)
    (tmp_path / "ptb.valid.txt").write_text(" the dog sat \n")
    (tmp_path / "ptb.test.txt").write_text(" a cat sat \n the cat \n")  # "a" is unknown
    splits = load_dataset("ptb", root=str(tmp_path), batch_size=2, seq_len=4)
    info = splits.info
    assert info.task == "language_model" and info.input_shape == (4,)
    assert info.num_classes == 6  # the cat sat <eos> dog <unk>
    train = splits.train
    assert train.num_samples == (45 - 1) // 4  # 45 tokens with <eos>
    assert torch.equal(train.x.flatten()[1:], train.y.flatten()[:-1])
    assert train.x[0].tolist() == [0, 1, 2, 3]  # vocab in order of first appearance
    assert splits.test.x[0].tolist() == [5, 1, 2, 3]  # "a" -> <unk>
    # validation is PTB's own ptb.valid.txt (the whole training text still trains)
    short = load_dataset("ptb", root=str(tmp_path), batch_size=2, seq_len=2)
    assert short.val.x.tolist() == [[0, 4]]
    assert short.train.num_samples == (45 - 1) // 2
    none = load_dataset("ptb", root=str(tmp_path), batch_size=2, seq_len=2, val_fraction=0)
    assert none.val is None


# --------------------------------------------------------------------------------------------
# IDX files: Fashion-MNIST, MNIST


def test_read_idx_plain_and_gz(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", arr)
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_idx_reader_through_root(tmp_path: Path) -> None:
    arrays = _write_mnist_like(tmp_path)
    splits = load_dataset(
        "mnist", root=str(tmp_path), batch_size=4, test_batch_size=2, val_fraction=0
    )
    assert (splits.info.input_shape, splits.info.num_classes) == ((1, 28, 28), 10)
    assert (splits.info.raw.shape, splits.info.raw.dtype) == ((28, 28), "uint8")
    assert splits.train.num_samples == 12 and splits.test.num_samples == 5
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32))
    expected = (raw / 255.0 - 0.1307) / 0.3081
    assert torch.allclose(splits.train.x[:, 0], expected)
    assert splits.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # The same files serve as Fashion-MNIST when given as root (root wins over Debian's copy).
    fashion = load_dataset("fashion_mnist", root=str(tmp_path), batch_size=4)
    assert fashion.train.num_samples == 11 and fashion.val.num_samples == 1  # round(1.2)
    expected = (raw / 255.0 - 0.2860) / 0.3530
    assert torch.allclose(torch.cat([fashion.train.x, fashion.val.x])[:, 0].sum(0), expected.sum(0))


def test_idx_reader_torchvision_layout_uncompressed(tmp_path: Path) -> None:
    _write_mnist_like(tmp_path / "MNIST" / "raw", gz=False)
    splits = load_dataset("mnist", root=str(tmp_path), batch_size=4, limit_train=8, limit_test=3)
    assert splits.train.num_samples + splits.val.num_samples == 8
    assert splits.test.num_samples == 3


def test_fashion_mnist_system_copy() -> None:
    splits = load_dataset("fashion_mnist", batch_size=20, limit_train=100, limit_test=50)
    assert (splits.info.input_shape, splits.info.num_classes) == ((1, 28, 28), 10)
    assert (splits.info.raw.shape, splits.info.raw.dtype) == ((28, 28), "uint8")
    assert splits.train.num_samples == 90 and splits.val.num_samples == 10
    assert splits.test.num_samples == 50
    assert len(splits.train) == 4
    x = splits.train.x
    assert x.min() == pytest.approx(-0.2860 / 0.3530, abs=1e-5)  # black pixels
    assert abs(float(x.mean())) < 0.3 and abs(float(x.std()) - 1) < 0.3
    assert set(splits.train.y.tolist()) <= set(range(10))


def test_missing_root_names_the_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="download") as err:
        load_dataset("mnist", root=str(missing), batch_size=4)
    assert str(missing) in str(err.value) and str(missing / "MNIST" / "raw") in str(err.value)

    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "system"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion_mnist", root=str(missing), batch_size=4)
    for p in (missing, missing / "FashionMNIST" / "raw", tmp_path / "system"):
        assert str(p) in str(err.value)

    for name in ("cifar10", "ptb", "imagenet"):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            load_dataset(name, root=str(missing), batch_size=4)


# --------------------------------------------------------------------------------------------
# registry


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'") as err:
        load_dataset("nope", batch_size=4)
    for name in DATASETS:
        assert name in str(err.value)


def test_unknown_option_rejected() -> None:
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("digits", batch_size=4, n_train=5)
    with pytest.raises(ValueError, match="limit_train"):
        load_dataset("digits", batch_size=4, limit_train=0)


def test_a_batch_larger_than_the_training_set_is_a_config_problem():
    # Datasets whose size is unknown before loading meet this at run time: still bad input.
    from trainers.config import ConfigError

    with pytest.raises(ConfigError, match="data.batch_size: 8 exceeds the 5 training samples"):
        TensorBatches(torch.zeros(5, 2), torch.zeros(5), 8, drop_last=True)
