from __future__ import annotations

import pytest

from trainers.config import parse_train_config


@pytest.fixture
def tiny_config():
    """A factory for tiny training configs on synthetic 8x8 data (a few hundred samples)."""

    def make(**sections):
        base = {
            "data": {
                "name": "synthetic",
                "batch_size": 16,
                "options": {"n_train": 128, "n_test": 64},
            },
            "model": {"name": "small_cnn"},
            "optim": {"optimizer": "sgd", "lr": 0.05},
            "compression": {
                "method": "prune",
                "pnr": 3,
                "params": {"rate": 0.5},
                "targets": {"min_params": 10},
            },
            "run": {"steps": 20, "seed": 0, "device": "cpu", "eval_every": 0.5},
        }
        for key, value in sections.items():
            base[key] = {**base.get(key, {}), **value}
        return parse_train_config(base)

    return make
