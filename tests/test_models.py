"""Tests of trainers.models: every model builds, runs, and adapts to the data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.data import DataInfo
from trainers.models import MODELS, build_model

IMAGE_MODELS = [name for name in MODELS if name != "lstm_lm"]
SMALL_MODELS = ["lenet300100", "lenet5", "small_cnn", "resnet20"]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_model_forward_cifar_shape(name: str) -> None:
    model = build_model(name, DataInfo(input_shape=(3, 32, 32), num_classes=10))
    with torch.no_grad():  # shape check only; skipping autograd keeps the big nets fast
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    if name != "lenet300100":
        conv_name, conv = _first_conv(model)
        assert conv.in_channels == 3
        assert conv_name.split(".")[-1] == "conv1"


# resnet34 shares resnet18's builder; leaving it out saves a 21M-parameter build.
@pytest.mark.parametrize("name", [n for n in IMAGE_MODELS if n != "resnet34"])
def test_image_model_adapts_to_channels_and_classes(name: str) -> None:
    info = DataInfo(input_shape=(1, 8, 8), num_classes=7)
    model = build_model(name, info)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)  # train mode: gradients flow too
    if name != "lenet300100":
        assert _first_conv(model)[1].in_channels == 1


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_models_on_28px(name: str) -> None:
    model = build_model(name, DataInfo(input_shape=(1, 28, 28), num_classes=10))
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_resnet32_param_count() -> None:
    model = build_model("resnet32", DataInfo(input_shape=(3, 32, 32), num_classes=10))
    assert abs(_params(model) - 0.46e6) <= 0.01e6


def test_cifar_resnets_use_parameter_free_shortcuts() -> None:
    info = DataInfo(input_shape=(3, 32, 32), num_classes=10)
    for depth in (20, 32, 56):
        model = build_model(f"resnet{depth}", info)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == depth - 1  # conv1 + 2 per block; no 1x1 projection convs
        assert all(c.kernel_size == (3, 3) for c in convs)


def test_lenet5_is_the_caffe_variant() -> None:
    model = build_model("lenet5", DataInfo(input_shape=(1, 28, 28), num_classes=10))
    assert _params(model) == 431_080
    assert model.conv1.padding == (0, 0)
    small = build_model("lenet5", DataInfo(input_shape=(1, 8, 8), num_classes=10))
    assert small.conv1.padding == (2, 2)


def test_small_cnn_size_and_batchnorm_option() -> None:
    info = DataInfo(input_shape=(1, 8, 8), num_classes=10)
    model = build_model("small_cnn", info)
    assert 1_000 < _params(model) < 10_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    plain = build_model("small_cnn", info, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_torchvision_resnet_stem() -> None:
    small = build_model("resnet18", DataInfo(input_shape=(1, 32, 32), num_classes=10))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    big = build_model("resnet18", DataInfo(input_shape=(1, 128, 128), num_classes=10))
    assert big.conv1.kernel_size == (7, 7) and big.conv1.in_channels == 1
    assert isinstance(big.maxpool, nn.MaxPool2d)
    assert _first_conv(big)[0] == "conv1"


def test_lstm_lm() -> None:
    info = DataInfo(input_shape=(6,), num_classes=30, task="language_model", input_dtype=torch.long)
    model = build_model("lstm_lm", info, hidden=16)
    tokens = torch.randint(0, 30, (3, 6))
    assert model(tokens).shape == (3, 6, 30)
    assert model.lstm.num_layers == 2 and model.lstm.hidden_size == 16
    assert isinstance(model.decoder, nn.Linear)
    tied = build_model("lstm_lm", info, hidden=16, tie_weights=True, dropout=0.5)
    assert tied.decoder.weight is tied.embedding.weight
    assert tied(tokens).shape == (3, 6, 30)


def test_models_reject_mismatched_data() -> None:
    text = DataInfo(input_shape=(6,), num_classes=30, task="language_model", input_dtype=torch.long)
    with pytest.raises(ValueError, match="image"):
        build_model("resnet20", text)
    with pytest.raises(ValueError, match="language-model"):
        build_model("lstm_lm", DataInfo(input_shape=(1, 8, 8), num_classes=10))


def test_unknown_model_and_option() -> None:
    info = DataInfo(input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="unknown model 'nope'") as err:
        build_model("nope", info)
    for name in MODELS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="batchnorm"):
        build_model("lenet5", info, batchnorm=True)
