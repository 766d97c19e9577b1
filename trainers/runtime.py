"""The process environment of a training run: device, seeds, subnormal floats."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def flushing_subnormals() -> bool:
    """Whether this thread's CPU currently reads subnormal floats as zero."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


@contextmanager
def subnormals_flushed(enabled: bool) -> Iterator[None]:
    """Flush subnormal floats to zero on this thread's CPU (x86 FTZ/DAZ), restored on exit.

    Why: a weight that stops receiving gradient (a pruned-away unit, a dead ReLU) keeps a
    momentum entry that decays geometrically through the subnormal range, where x86 arithmetic
    is ~100x slower. A LeNet-300-100 pruned to 90% carries hundreds of them after a few
    thousand steps; unflushed they cost ~2% of every optimizer step. The flag is per thread;
    torch's small elementwise ops (the optimizer's, here) run on the calling one.
    """
    if not enabled or flushing_subnormals():
        yield
        return
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)
