from __future__ import annotations

import pytest
import torch

from trainers.config import parse_train_config

# Fixtures that start a real service: a test using one belongs to the integration tier, which
# `make test-fast` leaves out.
SERVICE_FIXTURES = {"mlflow_server"}


def pytest_collection_modifyitems(config, items):
    unmarked = [
        item.nodeid
        for item in items
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that start a real service must be marked @pytest.mark.integration: "
            + ", ".join(unmarked)
        )


@pytest.fixture
def tiny_config():
    """A factory for tiny training configs on synthetic 8x8 data (a few hundred samples)."""

    def make(**sections):
        base = {
            "data": {
                "name": "synthetic",
                "batch_size": 16,
                # 130 train + 14 validation samples: 8 batches of 16 per epoch
                "options": {"n_train": 144, "n_test": 64},
            },
            "model": {"name": "small_cnn"},
            "optim": {"optimizer": "sgd", "lr": 0.05},
            "compression": {
                "method": "prune",
                "pnr": 3,
                "params": {"rate": 0.5},
                "targets": {"min_params": 10},
            },
            "run": {"steps": 20, "seed": 0, "device": "cpu", "eval_every": 0.5, "threads": 1},
        }
        for key, value in sections.items():
            base[key] = {**base.get(key, {}), **value}
        return parse_train_config(base)

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one intra-op thread for a module: on tiny models the thread hand-offs cost
    more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (``tests/mlflow_server.py``) shared by the whole session.

    Started on first use (~20 s). A test that stops it must restart it before it ends
    (``try: server.stop() ... finally: server.start()``).
    """
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
