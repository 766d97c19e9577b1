"""e_opt and the regularization error of every trial (DESIGN §3), from plain trial records.

The papers' rule: accuracy is best when the weight change per batch, ``e_w / pNR``, sits at an
optimum ``e_opt`` that hardly depends on the compression strength. So:

1. group the trials by compression strength (the method's knobs, pNR and lr excluded);
2. in each group take the most accurate trial; ``e_opt`` is the mean of their ``mean_e_w_per_pnr``;
3. a trial's regularization error is ``|mean_e_w_per_pnr − e_opt|``;
4. for a strength with weight change ``e_w(s)`` per event, the suggested period is
   ``pNR ≈ e_w(s) / e_opt``.

Searched strengths are usually continuous (a TPE-sampled pruning rate is never the same
twice), so continuous knobs are binned before grouping: ``bins`` equal bins over the observed
range, on a log scale when the values span more than a decade (a knob with no more distinct
values than bins, e.g. a grid, keeps its values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Knobs that set how often / how fast, not how hard: never part of the strength.
NOT_STRENGTH = {"pnr", "lr", "momentum", "weight_decay", "batch_size", "epochs"}


@dataclass
class Trial:
    """What the analysis needs of one trial."""

    trial_id: str
    method: str
    knobs: dict[str, Any]
    accuracy: float | None
    mean_e_w: float | None
    mean_e_w_per_pnr: float | None
    compression_ratio: float | None = None
    run_id: str | None = None
    status: str = "FINISHED"

    @property
    def pnr(self) -> float | None:
        v = self.knobs.get("pnr")
        return float(v) if v is not None else None

    @property
    def usable(self) -> bool:
        return self.status == "FINISHED" and all(
            v is not None and math.isfinite(v)
            for v in (self.accuracy, self.mean_e_w, self.mean_e_w_per_pnr)
        )


@dataclass
class Group:
    strength: tuple[tuple[str, Any], ...]  # (("method", m), (knob, binned value), ...)
    trials: list[Trial] = field(default_factory=list)

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda t: t.accuracy)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={_short(v)}" for k, v in self.strength)


@dataclass
class Analysis:
    e_opt: float
    groups: list[Group]
    reg_error: dict[str, float]  # trial id -> |mean_e_w_per_pnr - e_opt|
    suggested_pnr: dict[str, float]  # group label -> e_w(s) / e_opt
    used: int
    skipped: list[str]  # trial ids without usable results (failed, running, missing metrics)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _binner(values: list[float], bins: int):
    """A function mapping a value to the centre of its bin (log bins for wide positive ranges)."""
    lo, hi = min(values), max(values)
    if len(set(values)) <= bins or bins < 1:  # already few distinct strengths (a grid)
        return lambda v: v
    log = lo > 0 and hi / lo > 10
    a, b = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
    width = (b - a) / bins

    def centre(v: float) -> float:
        x = math.log10(v) if log else v
        i = min(int((x - a) / width), bins - 1)
        c = a + (i + 0.5) * width
        return float(f"{10**c if log else c:.3g}")

    return centre


def group_by_strength(trials: Iterable[Trial], bins: int = 5) -> list[Group]:
    """Groups of trials of equal (binned) compression strength, in a stable order."""
    trials = list(trials)
    continuous: dict[tuple[str, str], list[float]] = {}
    for t in trials:
        for k, v in t.knobs.items():
            if k not in NOT_STRENGTH and isinstance(v, float):
                continuous.setdefault((t.method, k), []).append(v)
    binners = {key: _binner(vals, bins) for key, vals in continuous.items()}
    groups: dict[tuple, Group] = {}
    for t in trials:
        parts = [("method", t.method)]
        for k in sorted(t.knobs):
            if k in NOT_STRENGTH or k == "method":
                continue
            v = t.knobs[k]
            parts.append((k, binners[(t.method, k)](v) if (t.method, k) in binners else v))
        key = tuple(parts)
        groups.setdefault(key, Group(key)).trials.append(t)
    return sorted(groups.values(), key=lambda g: g.label)


def analyze(trials: Iterable[Trial], bins: int = 5) -> Analysis:
    """e_opt, every trial's regularization error and the suggested pNR per strength.

    Trials without usable results (failed, still running, missing metrics) are left out and
    listed in ``skipped``. Raises ``ValueError`` when no trial is usable.
    """
    trials = list(trials)
    usable = [t for t in trials if t.usable]
    skipped = [t.trial_id for t in trials if not t.usable]
    if not usable:
        raise ValueError(
            f"no finished trial with accuracy and mean_e_w_per_pnr among {len(trials)} trial(s)"
        )
    groups = group_by_strength(usable, bins)
    e_opt = sum(g.best.mean_e_w_per_pnr for g in groups) / len(groups)
    reg_error = {t.trial_id: abs(t.mean_e_w_per_pnr - e_opt) for t in usable}
    suggested = {}
    for g in groups:
        e_w = sorted(t.mean_e_w for t in g.trials)[len(g.trials) // 2]  # median e_w per event
        suggested[g.label] = e_w / e_opt if e_opt > 0 else float("inf")
    return Analysis(e_opt, groups, reg_error, suggested, len(usable), skipped)


def pareto_front(trials: Iterable[Trial]) -> list[Trial]:
    """Trials no other trial beats on both accuracy and compression ratio, by accuracy."""
    pts = [t for t in trials if t.usable and t.compression_ratio is not None]

    def dominated(t: Trial) -> bool:
        return any(
            o.accuracy >= t.accuracy
            and o.compression_ratio >= t.compression_ratio
            and (o.accuracy > t.accuracy or o.compression_ratio > t.compression_ratio)
            for o in pts
        )

    return sorted((t for t in pts if not dominated(t)), key=lambda t: -t.accuracy)
