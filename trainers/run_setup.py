"""What a run is built from: its data and its compression method with the targets it acts on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trainers.config import ConfigError, TrainConfig
from trainers.data import DataSplits, load_dataset
from trainers.distortions import Distortion, make_distortion
from trainers.methods import MethodRecipe
from trainers.targets import compression_targets


def load_run_data(cfg: TrainConfig, device: torch.device) -> DataSplits:
    """The train / validation / test sources ``cfg.data`` describes, on ``device``."""
    d = cfg.data
    return load_dataset(
        d.name,
        batch_size=d.batch_size,
        test_batch_size=d.test_batch_size,
        root=d.root,
        download=d.download,
        limit_train=d.limit_train,
        limit_test=d.limit_test,
        device=str(device),
        val_fraction=d.val_fraction,
        **d.options,
    )


@dataclass
class Compression:
    """The run's compression: at most one of a distortion (applied every pNR steps) and a
    phase-structured method (:mod:`trainers.methods`), and the parameters they act on."""

    distortion: Distortion | None = None
    method: MethodRecipe | None = None
    targets: dict[str, nn.Parameter] = field(default_factory=dict)


def make_compression(cfg: TrainConfig, model: nn.Module) -> Compression:
    """The compression ``cfg.compression`` names, with its targets in ``model``.

    Raises:
        ConfigError: the targets do not fit the method (none selected, a rank too large...).
    """
    if cfg.compression.method == "none":
        return Compression()
    made = make_distortion(cfg.compression.method, **cfg.compression.params)
    targets, problems = compression_targets(model, cfg.compression.targets, made)
    if problems:
        raise ConfigError(problems)
    if isinstance(made, MethodRecipe):
        return Compression(method=made, targets=targets)
    return Compression(distortion=made, targets=targets)
