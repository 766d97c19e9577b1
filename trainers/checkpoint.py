"""Checkpoint/resume state of a training run: its format version and the random generators.

A checkpoint holds everything a run needs to continue bit-exactly: model, optimizer, schedule,
a recipe's structure, the progress counters and every random generator the run draws from.
:meth:`Trainer.state_dict <trainers.loop.Trainer.state_dict>` and ``load_state_dict`` use
:func:`trainer_state` and :func:`restore_trainer`, which belong to the trainer: they read and
set its private running sums (training loss since the last evaluation, e_w so far) too.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from trainers.loop import Trainer

CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The state of every global generator a run draws from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Set the global generators to a state from :func:`rng_state`."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


def check_version(state: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``state`` has this code's checkpoint format."""
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")


def trainer_state(t: Trainer) -> dict[str, Any]:
    """Everything ``t`` needs to continue exactly: model, optimizer, schedule, progress, RNGs."""
    return {
        "version": CHECKPOINT_VERSION,
        "config": t.cfg.to_dict(),
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler else None,
        "method": t.method.state_dict() if t.method else None,
        "progress": {
            "step": t.step,
            "event": t.event,
            "next_eval": t.next_eval,
            "loss_sum": t._loss_sum.clone(),
            "loss_count": t._loss_count,
            "ew_sum": t._ew_sum,
            "last_eval": dict(t.last_eval),
            "phase_metrics": dict(t.phase_metrics),
        },
        "rng": rng_state(),
    }


def restore_trainer(t: Trainer, state: dict[str, Any]) -> None:
    """Set ``t`` (built from the same configuration) to a state from :func:`trainer_state`."""
    check_version(state)
    if t.method is not None and state.get("method") is not None:
        # Saved after the recipe's end_phase: rebuild that structure and the fine-tuning
        # optimizer, then load their states.
        t.model = t.method.restore(t.model, state["method"])
        t._start_finetune()
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    if t.scheduler is not None and state["scheduler"] is not None:
        t.scheduler.load_state_dict(state["scheduler"])
    p = state["progress"]
    t.step, t.event, t.next_eval = p["step"], p["event"], p["next_eval"]
    t._loss_sum = p["loss_sum"].to(t.device)
    t._loss_count, t._ew_sum = p["loss_count"], p["ew_sum"]
    t.last_eval = dict(p["last_eval"])
    t.phase_metrics = dict(p.get("phase_metrics", {}))
    restore_rng(state["rng"])
