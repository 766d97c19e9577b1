"""One MAC counter for the dense and the exported model, checked against hand-computed counts.

The tiny model: a 3×3 conv 4→8 (padding 1) on a 4×4×4 input, then a linear 128→4. Per sample:

- dense: conv 16 positions · 8 outputs · (4·3·3) = 4608, linear 4·128 = 512; 5120 in all.
- SVD rank 2: conv → 3×3 conv 4→2 (16·2·36 = 1152) + 1×1 conv 2→8 (16·8·2 = 256);
  linear → 128→2 (256) + 2→4 (8); 1672 in all.
- tiled SVD, 4×4 tiles of rank 1: the conv's lowered 8×36 matrix is 2·9 tiles, each 2·4·1
  MACs per output position (16·144 = 2304); the linear's 4×128 is 1·32 tiles (32·8 = 256);
  2560 in all.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.compressed_size import compressed_size
from trainers.counting import count_macs, layer_macs
from trainers.distortions import make_distortion
from trainers.export import compression_report, export

SHAPE = (4, 4, 4)
TARGETS = ["0.weight", "2.weight"]


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Flatten(), nn.Linear(128, 4))


def test_dense_counts_per_layer():
    assert layer_macs(tiny(), SHAPE) == {"0": 4608, "2": 512}
    assert count_macs(tiny(), SHAPE) == 5120


@pytest.mark.parametrize(
    ("method", "knobs", "expected"),
    [("svd", {"rank": 2}, 1672), ("tiled_svd", {"tile": 4, "rank": 1}, 2560)],
)
def test_exported_model_counts_and_the_trainers_estimate_agree(method, knobs, expected):
    model, dist = tiny(), make_distortion(method, **knobs)
    exported = export(model, dist, TARGETS)
    assert count_macs(exported, SHAPE) == expected
    report = compression_report(model, exported, SHAPE)
    assert (report["macs_before"], report["macs_after"]) == (5120, expected)
    # The trainer never builds the compressed form: its estimate from the distortion's
    # macs_fraction must land on the same number.
    params = dict(model.named_parameters())
    size = compressed_size(model, dist, {n: params[n] for n in TARGETS}, SHAPE, torch.float32)
    assert (size.macs_dense, size.macs) == (5120, pytest.approx(expected))


def test_tiled_layers_count_themselves_once():
    exported = export(tiny(), make_distortion("tiled_svd", tile=4, rank=1), TARGETS)
    # The inner TiledLowRankLinear of the conv runs through .lowered(), not its forward: it is
    # not counted on its own.
    assert layer_macs(exported, SHAPE) == {"0": 2304, "2": 256}


def test_lstm_and_a_layer_run_twice():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(self.fc(self.fc(x)))[0]

    # 5 time steps: fc 2 calls · 5 · 3·3 = 90; LSTM 5 · 4·4·((3 + 4) + (4 + 4)) = 1200
    assert layer_macs(Twice(), (5, 3)) == {"fc": 90, "lstm": 1200}
