"""How many torch threads a run uses.

torch's default intra-op pool is one thread per *core of the machine*, which on a shared or
containerized host (a CPU affinity mask, a Ray worker holding 1 CPU of 64) oversubscribes the
CPUs the process may actually use; oversubscribed threads spin and crawl. A run therefore uses
one thread per CPU available to its process unless ``run.threads`` says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows: no affinity mask
        return max(1, os.cpu_count() or 1)


def run_threads(configured: int | None) -> int:
    """The thread count of a run: ``run.threads`` if set, else :func:`available_cpus`."""
    return configured if configured is not None else available_cpus()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, then put back (the setting is
    process-wide, and a sweep worker runs trial after trial in one process)."""
    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
