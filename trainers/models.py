"""Model zoo, built to fit a dataset's :class:`~trainers.data.DataInfo`.

Every model is a plain ``nn.Module`` whose convolutions are ``nn.Conv2d`` and whose
fully-connected layers are ``nn.Linear``, so compression code can find its targets by type. The
first convolution is always the first ``nn.Conv2d`` in ``named_modules()`` order (the papers
leave it uncompressed by default).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.data import DataInfo
from trainers.registry import Registry

__all__ = [
    "MODELS",
    "BasicBlockA",
    "CifarResNet",
    "LSTMLanguageModel",
    "LeNet5",
    "LeNet300100",
    "SmallCNN",
    "VGG",
    "build_model",
    "model_options",
]


# --------------------------------------------------------------------------------------------
# Helpers


def _image_shape(name: str, info: DataInfo) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image dataset, or a clear error for anything else."""
    if info.task != "classification" or len(info.input_shape) != 3:
        raise ValueError(
            f"model {name!r} needs image classification input (C, H, W); got "
            f"task={info.task!r}, input_shape={info.input_shape}"
        )
    c, h, w = info.input_shape
    return int(c), int(h), int(w)


@torch.no_grad()
def _flat_features(features: nn.Module, shape: tuple[int, ...]) -> int:
    """Size of ``features``' output for one sample, found by a dry run (no formula to drift)."""
    was_training = features.training
    features.eval()  # BatchNorm in train mode would refuse a batch of one
    try:
        n = features(torch.zeros(1, *shape)).numel()
    finally:
        features.train(was_training)
    return n


# --------------------------------------------------------------------------------------------
# Small models


class LeNet300100(nn.Module):
    """LeNet-300-100: flatten, 300, 100, classes (ReLU)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, ReLU, fc classes.

    As in Caffe's prototxt there is no nonlinearity after the convolutions.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, padding: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], 20, 5, padding=padding)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=padding)
        self.pool2 = nn.MaxPool2d(2)
        features = nn.Sequential(self.conv1, self.pool1, self.conv2, self.pool2)
        self.fc1 = nn.Linear(_flat_features(features, in_shape), 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class SmallCNN(nn.Module):
    """A few-thousand-parameter CNN for 8x8 digits: conv 8, conv 16, pool, fc.

    An adaptive pool to 4x4 keeps the fc layer small on bigger inputs (28x28 and up).
    """

    def __init__(self, in_channels: int, num_classes: int, batchnorm: bool = True) -> None:
        super().__init__()
        # Conv bias is redundant in front of BatchNorm.
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(16) if batchnorm else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.squeeze = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.squeeze(self.pool(x))
        return self.fc(x.flatten(1))


# --------------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016, section 4.2)


class BasicBlockA(nn.Module):
    """Two 3x3 convs with BatchNorm; option-A shortcut (subsample + zero-pad channels)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: Tensor) -> Tensor:
        """Identity, or parameter-free downsampling: every other pixel, zero extra channels."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: 16/32/64 channels, n blocks per stage, global pool, fc."""

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlockA(in_planes, planes, stride)]
        blocks += [BasicBlockA(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# --------------------------------------------------------------------------------------------
# VGG for CIFAR

_VGG19: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
_VGG19 += [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with BatchNorm for small images, ending in a global pool and ``Linear(512, classes)``.

    Pools use ``ceil_mode`` so inputs smaller than 32x32 (down to 1x1) still run.
    """

    def __init__(self, cfg: list[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        # Named layers (conv1, bn1, ..., pool1) read better in compression reports than indices.
        layers: dict[str, nn.Module] = {}
        c, convs, pools = in_channels, 0, 0
        for v in cfg:
            if v == "M":
                pools += 1
                layers[f"pool{pools}"] = nn.MaxPool2d(2, ceil_mode=True)
            else:
                convs += 1
                layers[f"conv{convs}"] = nn.Conv2d(c, int(v), 3, padding=1, bias=False)
                layers[f"bn{convs}"] = nn.BatchNorm2d(int(v))
                layers[f"relu{convs}"] = nn.ReLU(inplace=True)
                c = int(v)
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


# --------------------------------------------------------------------------------------------
# Language model


class LSTMLanguageModel(nn.Module):
    """Zaremba et al. (2014) LSTM LM: embedding, stacked LSTM, linear decoder.

    Input ``(B, T)`` token ids, output ``(B, T, vocab)`` logits. The hidden state starts at zero
    for every window (windows are independent samples in this project).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden: int = 200,
        layers: int = 2,
        dropout: float = 0.0,
        tie_weights: bool = False,
        init_range: float = 0.1,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            hidden, hidden, layers, dropout=dropout if layers > 1 else 0.0, batch_first=True
        )
        self.decoder = nn.Linear(hidden, vocab_size)
        # Zaremba: every parameter uniform in [-init_range, init_range] (0.1 small, 0.05 medium).
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.drop(self.embedding(x)))
        return self.decoder(self.drop(out))


# --------------------------------------------------------------------------------------------
# Builders: f(info, **options) -> nn.Module


def _lenet300100(info: DataInfo) -> nn.Module:
    if info.task != "classification":
        raise ValueError(f"model 'lenet300100' needs classification input, got {info.task!r}")
    in_features = 1
    for s in info.input_shape:
        in_features *= int(s)
    return LeNet300100(in_features, info.num_classes)


def _lenet5(info: DataInfo, padding: int | None = None) -> nn.Module:
    c, h, w = _image_shape("lenet5", info)
    if padding is None:
        # Unpadded LeNet-5 needs >= 16 px (28 -> 24 -> 12 -> 8 -> 4); pad smaller inputs "same".
        padding = 0 if min(h, w) >= 16 else 2
    return LeNet5((c, h, w), info.num_classes, padding)


def _small_cnn(info: DataInfo, batchnorm: bool = True) -> nn.Module:
    c, _, _ = _image_shape("small_cnn", info)
    return SmallCNN(c, info.num_classes, batchnorm=batchnorm)


def _cifar_resnet(info: DataInfo, *, depth: int) -> nn.Module:
    c, _, _ = _image_shape(f"resnet{depth}", info)
    return CifarResNet(depth, c, info.num_classes)


def _vgg19(info: DataInfo) -> nn.Module:
    c, _, _ = _image_shape("vgg19", info)
    return VGG(_VGG19, c, info.num_classes)


def _torchvision_resnet(info: DataInfo, *, arch: str) -> nn.Module:
    import torchvision  # on use: seconds to import, and only these models need it

    c, h, w = _image_shape(arch, info)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=info.num_classes)
    if max(h, w) <= 64:
        # The ImageNet stem (7x7/2 conv + maxpool) would shrink 32 px to 8 px before stage 1.
        model.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif c != 3:
        model.conv1 = nn.Conv2d(c, 64, 7, stride=2, padding=3, bias=False)
    # Assigning an existing attribute keeps its slot, so conv1 stays the first nn.Conv2d.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _lstm_lm(
    info: DataInfo,
    hidden: int = 200,
    layers: int = 2,
    dropout: float = 0.0,
    tie_weights: bool = False,
    init_range: float = 0.1,
) -> nn.Module:
    if info.task != "language_model" or len(info.input_shape) != 1:
        raise ValueError(
            f"model 'lstm_lm' needs language-model input (seq_len,); got task={info.task!r}, "
            f"input_shape={info.input_shape}"
        )
    return LSTMLanguageModel(info.num_classes, hidden, layers, dropout, tie_weights, init_range)


# name -> builder f(info, **options); the partials' keywords (depth, arch) are not options.
MODELS: Registry[Any] = Registry(
    "model",
    {
        "lenet300100": _lenet300100,
        "lenet5": _lenet5,
        "small_cnn": _small_cnn,
        "resnet20": partial(_cifar_resnet, depth=20),
        "resnet32": partial(_cifar_resnet, depth=32),
        "resnet56": partial(_cifar_resnet, depth=56),
        "vgg19": _vgg19,
        "resnet18": partial(_torchvision_resnet, arch="resnet18"),
        "resnet34": partial(_torchvision_resnet, arch="resnet34"),
        "lstm_lm": _lstm_lm,
    },
    skip=1,  # info
)


def model_options(name: str) -> list[str]:
    """Model-specific option names accepted by ``build_model(name, info, **options)``."""
    return MODELS.options(name)


def build_model(name: str, info: DataInfo, **options: Any) -> nn.Module:
    """Build model ``name`` for data described by ``info``.

    Args:
        name: A key of :data:`MODELS`.
        info: Input shape, number of classes (or vocabulary size) and task of the data.
        **options: Model-specific options (see :func:`model_options`).

    Raises:
        ValueError: Unknown model name or option, or a model that does not fit ``info``.
    """
    model: nn.Module = MODELS.create(name, info, **options)
    return model
