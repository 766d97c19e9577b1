"""How a sweep's trials ended, counted from their MLflow runs, and the exit code that says so.

A trial run ends in one of these states (MLflow status + the ``compsweep.status`` tag):

=========== ========= =========================================================
state       MLflow    meaning
=========== ========= =========================================================
finished    FINISHED  trained to its end
failed      FAILED    an error (after its retries), or a refused config
diverged    FAILED    non-finite loss or weights; the reason says where
stopped     KILLED    stopped early by ASHA or the time budget: not a failure
killed      KILLED    stopped by the user (``compsweep stop``, Ctrl-C); resumable
running     RUNNING   still training, or orphaned by a driver that died
=========== ========= =========================================================

Exit codes of ``compsweep run`` / ``resume``: 0 every trial finished (or was stopped early by
the scheduler or the time budget), 1 some trial failed or diverged (or none finished), 2 bad
input, 3 the sweep is held by another driver, 130 interrupted (Ctrl-C or ``compsweep stop``:
resumable).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sweeps.tracking_schema import STATUS_TAG

STATES = ("finished", "failed", "diverged", "stopped", "killed", "running")

EXIT_OK = 0
EXIT_TRIALS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BUSY = 3
EXIT_INTERRUPTED = 130


def run_state(status: str, tags: dict[str, str]) -> str:
    """The state of a trial run from its MLflow status and ``compsweep.status`` tag."""
    tag = tags.get(STATUS_TAG, "")
    if status == "FINISHED":
        return "finished"
    if status == "FAILED":
        return "diverged" if tag == "diverged" else "failed"
    if status == "KILLED":
        return "killed" if tag == "killed" else "stopped"
    return "running"


def run_outcome(status: str, outcome: str | None, why: str | None) -> str | None:
    """Why a run did not finish cleanly (``status``: its MLflow status; ``outcome`` and
    ``why``: its ``compsweep.status`` and ``compsweep.status_reason`` tags), or None."""
    if status in ("RUNNING", "SCHEDULED"):
        return "still running"
    if outcome == "diverged":
        return f"diverged: {why}" if why else "diverged"
    if outcome == "stopped":
        return "stopped early by the scheduler"
    if outcome == "killed":
        return "killed by the user"
    if status == "FAILED" or outcome == "failed":
        return f"failed: {why}" if why else "failed"
    if status == "KILLED":
        return "stopped early by the scheduler, or killed"
    if status != "FINISHED":
        return f"run status {status}"
    if outcome not in (None, "finished"):
        return f"{outcome}: {why}" if why else str(outcome)
    return None


def incomplete(runs: Iterable[tuple[Any, str | None]]) -> str | None:
    """Why a configuration cannot be averaged over its runs, e.g. ``3 of 4 seeds diverged``;
    None when every run counts. ``runs``: each run's seed and why it does not count (None
    when it does).

    A mean over the seeds that happened to survive is the luckiest-seed estimate again, so a
    configuration counts only when all of its runs do (the same knobs and seed run twice are
    ``runs``, not ``seeds``)."""
    runs = list(runs)
    bad = Counter(why.split(":")[0] for _, why in runs if why)  # the kind, not the details
    if not bad:
        return None
    seeds = [seed for seed, _ in runs]
    unit = "seeds" if None not in seeds and len(set(seeds)) == len(seeds) else "runs"
    (first, n), *rest = bad.items()
    return ", ".join([f"{n} of {len(runs)} {unit} {first}", *(f"{m} {w}" for w, m in rest)])


@dataclass
class Outcome:
    """Trial counts by state, and whether the driver was interrupted before the end."""

    counts: Counter = field(default_factory=Counter)
    interrupted: bool = False
    budget: int | None = None  # trials the spec asks for
    crashed: bool = False  # the driver itself failed (Tune raised)

    @classmethod
    def from_runs(cls, runs: list[Any], interrupted: bool, budget: int | None) -> Outcome:
        counts = Counter(run_state(r.info.status, dict(r.data.tags)) for r in runs)
        return cls(counts, interrupted, budget)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def unsuccessful(self) -> int:
        return self.counts["failed"] + self.counts["diverged"]

    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.crashed or self.unsuccessful or not self.counts["finished"]:
            return EXIT_TRIALS_FAILED
        return EXIT_OK

    def parent_status(self) -> str:
        """MLflow status of the sweep's parent run."""
        if self.interrupted:
            return "KILLED"
        return "FINISHED" if self.counts["finished"] and not self.crashed else "FAILED"

    def summary(self) -> str:
        """E.g. ``4/4 trials: 2 finished, 1 failed, 1 diverged``."""
        parts = [f"{self.counts[s]} {s}" for s in STATES if self.counts[s]]
        of = f"/{self.budget}" if self.budget else ""
        return f"{self.total}{of} trials: {', '.join(parts) or 'none started'}"

    def metrics(self) -> dict[str, float]:
        """Counts as metrics of the parent run (``trials_finished``, …)."""
        return {f"trials_{s}": float(self.counts[s]) for s in STATES}
