"""Exact resume: a run stopped, checkpointed and resumed ends where the uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import torch

from trainers.callbacks import Callback
from trainers.config import TrainConfig
from trainers.loop import Trainer


class StopAt(Callback):
    """Requests a stop at the first evaluation at or after ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_evaluation(self, trainer, step, metrics):
        if step >= self.step:
            trainer.request_stop()


def fit(cfg: TrainConfig) -> tuple[Trainer, dict]:
    """A trainer run straight through, and its final metrics."""
    trainer = Trainer(cfg)
    return trainer, trainer.fit()


def assert_resume_is_exact(
    cfg: TrainConfig, tmp_path: Path, stop_at: int, full: tuple[Trainer, dict] | None = None
) -> Trainer:
    """Train ``cfg`` straight through (or take ``full``: a fitted trainer and its final
    metrics, see :func:`fit`), then again stopping at ``stop_at``, checkpoint, restore into a
    fresh trainer (other global RNG state) and finish: the weights must be identical bit for
    bit, and so must the final metrics. Returns the resumed trainer."""
    trainer, final = full or fit(cfg)
    first = Trainer(cfg, [StopAt(stop_at)])
    assert first.fit() == {}  # stopped early: no final metrics
    assert stop_at <= first.step < trainer.total_steps
    path = tmp_path / "ckpt.pt"
    first.save_checkpoint(str(path))
    torch.manual_seed(1234)  # a fresh process would have some other RNG state

    resumed = Trainer(cfg)
    resumed.load_checkpoint(str(path))
    resumed_final = resumed.fit()
    for (name, a), (_, b) in zip(
        trainer.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed_final == final
    return resumed
