"""e_opt, the regularization error of every trial and the suggested pNR per strength, from plain
trial records.

The papers' rule: a model generalizes best when the weight change per mini-batch,
``e_w / pNR``, sits at an optimum ``e_opt`` that hardly depends on the compression strength.
"Best" is measured by one validation metric from the catalogue (``metric``: validation
accuracy by default, or validation loss, which still resolves an optimum where accuracy sits
on a plateau within its noise), in that metric's direction; test metrics are carried along for
information only and never select.

0. Trials that did not finish cleanly are left out, each listed with its reason: failed,
   diverged (with the trainer's reason), stopped early by the scheduler, killed, still
   running, missing or non-finite metrics. A configuration (the same knobs, any seed) counts
   only when every run of it does: the others of a configuration with such a run are left
   out too, with the reason (``its configuration is left out: 3 of 4 seeds diverged``).
   Trials with the same knobs and the same seed are one configuration run more than once:
   they are folded into one entry (their metrics averaged) and counted.
1. Trials are grouped by compression strength: the method and its knobs (θ, a, η, rate,
   bits, rank, R_c, tile…), without the knobs that set how often or how fast (pNR, lr, …).
   Continuous strengths are binned (``bins`` equal bins over the observed range, in log space
   when it spans more than a decade; a knob with no more distinct values than bins, such as
   a grid, keeps its values).
2. In each group, the validation metric is a curve over ``x = log10(e_w/pNR)``; configurations
   that differ only in seed are averaged into one point. The group's optimum is located on
   that curve (:func:`sweeps.eopt.locate_optimum`: a quadratic around the best point). A group
   counts only when it has at least 3 distinct pNR and its best point is not at the smallest
   or largest pNR it tried; every other group is reported with its reason and the pNR to try
   next ("best at the edge pNR=1000 (the largest tried): widen the pNR range upward").
   An edge optimum is never averaged in.
3. ``e_opt`` is the geometric mean of the usable groups' optima, with a range: the wider of a
   95% bootstrap over trials and the spread of the groups' optima, and the number of groups
   behind it. With no usable group the analysis says that the sweep cannot support an e_opt,
   and what to run next.
4. A trial's regularization error is ``log10(mean_e_w_per_pnr) − log10(e_opt)``, signed:
   negative below e_opt (too little change per step), positive above.
5. Per strength, ``log e_w`` is fitted against ``log pNR`` over its trials, locally around
   where e_w/pNR crosses e_opt, and ``e_w(pNR) / pNR = e_opt`` solved for pNR
   (:func:`sweeps.eopt.suggest_pnr`), clamped to
   ≥ 1 and marked when it extrapolates beyond the tried pNR; a strength tried at one pNR only
   is an extrapolation that assumes e_w independent of pNR. Useful pNR typically lie between
   10 and 5000.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sweeps.eopt import Centre, Optimum, Suggestion, centre_and_range, locate_optimum, suggest_pnr
from sweeps.outcomes import incomplete, run_outcome
from trainers.metrics import (
    DEFAULT_OBJECTIVE,
    check_selectable,
    get_metric,
    pareto_set,
    validation_metrics,
)

# Knobs that set how often / how fast, not how hard: never part of the strength.
NOT_STRENGTH = {"pnr", "lr", "momentum", "weight_decay", "batch_size", "epochs"}
MIN_DISTINCT_PNR = 3
# Metrics a trial needs to be placed on the curve, besides the analysis metric.
REQUIRED = ("mean_e_w", "mean_e_w_per_pnr")


@dataclass
class Trial:
    """What the analysis needs of one trial run.

    Attributes:
        status: the MLflow run status (FINISHED, FAILED, KILLED, RUNNING…).
        outcome: the run's ``compsweep.status`` tag (finished, failed, diverged, stopped,
            killed) when it has one; ``outcome_reason`` its ``compsweep.status_reason``.
        folded: ids of identical trials (same knobs and seed) folded into this one.
        metrics: the run's other final metrics (e.g. val_loss), by name.
        metric: the metric the analysis places on the curve (set by :func:`analyze`).
    """

    trial_id: str
    method: str
    knobs: dict[str, Any]
    val_accuracy: float | None
    mean_e_w: float | None
    mean_e_w_per_pnr: float | None
    test_accuracy: float | None = None
    compression_ratio: float | None = None
    run_id: str | None = None
    status: str = "FINISHED"
    outcome: str | None = None
    outcome_reason: str | None = None
    seed: int | None = None
    steps: float | None = None  # optimizer steps trained
    folded: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    metric: str = DEFAULT_OBJECTIVE

    @property
    def value(self) -> float | None:
        """The trial's value of the analysis metric."""
        if self.metric in self.metrics:
            return self.metrics[self.metric]
        return getattr(self, self.metric, None)

    @property
    def score(self) -> float:
        """The value oriented so that larger is better (the metric's catalogue direction)."""
        return self.value if get_metric(self.metric).direction == "max" else -self.value

    @property
    def pnr(self) -> float | None:
        v = self.knobs.get("pnr")
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    @property
    def x(self) -> float:
        """log10 of the trial's e_w/pNR (only for usable trials)."""
        return math.log10(self.mean_e_w_per_pnr)

    @property
    def skip_reason(self) -> str | None:
        """Why the trial cannot take part, or None when it can."""
        ended = run_outcome(self.status, self.outcome, self.outcome_reason)
        if ended:
            return ended
        values = {self.metric: self.value, **{m: getattr(self, m) for m in REQUIRED}}
        missing = [m for m, v in values.items() if v is None]
        if missing:
            return f"missing metric(s): {', '.join(missing)}"
        bad = [m for m, v in values.items() if not math.isfinite(v)]
        if bad:
            return f"non-finite metric(s): {', '.join(bad)}"
        if self.mean_e_w_per_pnr <= 0 or self.mean_e_w <= 0:
            return "no weight change (e_w = 0): nothing to place on the log(e_w/pNR) axis"
        if self.pnr is None or self.pnr <= 0:
            return f"no numeric pNR (knob pnr = {self.knobs.get('pnr')!r})"
        return None

    @property
    def usable(self) -> bool:
        return self.skip_reason is None


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def config_key(t: Trial, with_seed: bool = True) -> tuple:
    """What identifies a configuration: method, every knob and (optionally) the seed."""
    knobs = tuple(sorted((k, repr(v)) for k, v in t.knobs.items()))
    return (t.method, knobs, t.seed) if with_seed else (t.method, knobs)


def fold_identical(trials: Iterable[Trial]) -> list[Trial]:
    """One entry per configuration (same knobs and seed), in first-seen order; the entry keeps
    the first trial's id and run, averages the metrics and lists the others in ``folded``."""
    by_key: dict[tuple, list[Trial]] = {}
    for t in trials:
        by_key.setdefault(config_key(t), []).append(t)
    out = []
    for same in by_key.values():
        if len(same) == 1:
            out.append(same[0])
            continue
        avg = {}
        for m in (
            "val_accuracy",
            "test_accuracy",
            "mean_e_w",
            "mean_e_w_per_pnr",
            "compression_ratio",
        ):
            vals = [getattr(t, m) for t in same]
            avg[m] = None if any(v is None for v in vals) else sum(vals) / len(vals)
        shared = set.intersection(*(set(t.metrics) for t in same))
        metrics = {m: sum(t.metrics[m] for t in same) / len(same) for m in shared}
        out.append(replace(same[0], folded=[t.trial_id for t in same[1:]], metrics=metrics, **avg))
    return out


@dataclass
class Group:
    strength: tuple[tuple[str, Any], ...]  # (("method", m), (knob, binned value), ...)
    trials: list[Trial] = field(default_factory=list)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={_short(v)}" for k, v in self.strength)


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


@dataclass
class Point:
    """One configuration on a group's curve: its trials differ only in seed and are averaged."""

    trials: list[Trial]

    @property
    def pnr(self) -> float:
        return self.trials[0].pnr

    @property
    def x(self) -> float:
        return sum(t.x for t in self.trials) / len(self.trials)

    @property
    def value(self) -> float:
        """The analysis metric, averaged over the seeds."""
        return sum(t.value for t in self.trials) / len(self.trials)

    @property
    def score(self) -> float:
        """:attr:`value` oriented so that larger is better."""
        return sum(t.score for t in self.trials) / len(self.trials)

    @property
    def val_accuracy(self) -> float | None:
        vals = [t.val_accuracy for t in self.trials]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    @property
    def test_accuracy(self) -> float | None:
        vals = [t.test_accuracy for t in self.trials]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)


def curve_points(trials: Iterable[Trial]) -> list[Point]:
    by_config: dict[tuple, list[Trial]] = {}
    for t in trials:
        by_config.setdefault(config_key(t, with_seed=False), []).append(t)
    return [Point(ts) for ts in by_config.values()]


def _curve_xy(trials: list[Trial]) -> list[tuple[float, float]]:
    return [(p.x, p.score) for p in curve_points(trials)]


USED, EDGE, TOO_FEW = "used", "edge", "too few pNR"


@dataclass
class GroupResult:
    """One strength group: its curve, optimum, whether it counts for e_opt, suggested pNR."""

    group: Group
    points: list[Point]
    best: Point
    optimum: Optimum
    status: str  # USED, EDGE or TOO_FEW
    reason: str  # why not used ("" when used)
    next_pnr: list[float]  # pNR worth adding (empty when used)
    suggestion: Suggestion | None = None  # None without e_opt
    range_note: str = ""  # when next_pnr leave the space's pNR range (also ends the reason)

    @property
    def label(self) -> str:
        return self.group.label

    @property
    def pnrs(self) -> list[float]:
        return sorted({p.pnr for p in self.points})

    @property
    def best_pnr_text(self) -> str:
        """The observed best pNR; at an edge, the bound it implies (≥ largest, ≤ smallest)."""
        p, pnrs = f"{self.best.pnr:g}", self.pnrs
        if self.status == EDGE and self.best.pnr == pnrs[-1]:
            return f"≥{p}"
        if self.status == EDGE and self.best.pnr > 1:
            return f"≤{p}"
        return p


def _geometric_step(pnrs: list[float], at_top: bool) -> float:
    """The ratio between the two outermost pNR on one side (10 when there is one pNR)."""
    if len(pnrs) < 2:
        return 10.0
    r = pnrs[-1] / pnrs[-2] if at_top else pnrs[1] / pnrs[0]
    return r if r > 1.0 else 10.0


def _nice(v: float) -> float:
    return float(f"{v:.2g}") if v >= 1 else 1.0


def assess_group(g: Group, pnr_range: tuple[float, float] | None = None) -> GroupResult:
    """Locate a group's optimum and decide whether it may count for e_opt; with the space's
    ``pnr_range``, say which pNR worth adding lie outside it."""
    r = _assess(g)
    out = [p for p in r.next_pnr if pnr_range and not pnr_range[0] <= p <= pnr_range[1]]
    if not out or pnr_range is None:
        return r
    note = (f"{', '.join(f'{p:g}' for p in out)} outside the space's pNR range "
            f"[{pnr_range[0]:g}, {pnr_range[1]:g}]: widen space.overrides.pnr")  # fmt: skip
    return replace(r, reason=f"{r.reason}; {note}", range_note=note)


def _assess(g: Group) -> GroupResult:
    points = curve_points(g.trials)
    top = max(p.score for p in points)
    tied = sorted((p for p in points if p.score == top), key=lambda p: p.x)  # as located
    pnrs = sorted({p.pnr for p in points})
    # Among equally good points, one at an edge makes the optimum an edge optimum: a plateau
    # that reaches the edge may go on beyond it.
    best = next((p for p in tied if p.pnr in (pnrs[0], pnrs[-1])), tied[0])
    optimum = locate_optimum([(p.x, p.score) for p in points])
    if best is not tied[0]:  # the optimum is then that edge point's, not a tied inner one's
        optimum = Optimum(best.x, "best point (at the edge, tied with others)")
    shown = ", ".join(f"{p:g}" for p in pnrs)
    if len(pnrs) < MIN_DISTINCT_PNR:
        r = _geometric_step(pnrs, at_top=True)
        nxt = sorted({_nice(best.pnr / r), _nice(best.pnr * r)} - set(pnrs))
        reason = (f"only {len(pnrs)} distinct pNR ({shown}); an interior optimum needs "
                  f"{MIN_DISTINCT_PNR}: add pNR {', '.join(f'{p:g}' for p in nxt)}")  # fmt: skip
        return GroupResult(g, points, best, optimum, TOO_FEW, reason, nxt)
    if best.pnr == pnrs[-1]:
        r = _geometric_step(pnrs, at_top=True)
        nxt = [_nice(best.pnr * r), _nice(best.pnr * r * r)]
        reason = (f"best at the edge pNR={best.pnr:g} (the largest tried): widen the pNR range "
                  f"upward (add {', '.join(f'{p:g}' for p in nxt)})")  # fmt: skip
        steps = max((t.steps for t in g.trials if t.steps), default=None)
        if steps and nxt[0] * 2 > steps:
            reason += (f"; a run of {steps:g} steps has fewer than 2 distortions at pNR "
                       f"{nxt[0]:g}: train longer too")  # fmt: skip
        return GroupResult(g, points, best, optimum, EDGE, reason, nxt)
    if best.pnr == pnrs[0]:
        if best.pnr <= 1:
            reason = (f"best at the edge pNR={best.pnr:g}, the smallest possible: this strength "
                      "changes the weights too little per step at any pNR; try a stronger "
                      "setting")  # fmt: skip
            return GroupResult(g, points, best, optimum, EDGE, reason, [])
        r = _geometric_step(pnrs, at_top=False)
        nxt = sorted({_nice(best.pnr / r), _nice(best.pnr / r / r)} - set(pnrs))
        reason = (f"best at the edge pNR={best.pnr:g} (the smallest tried): widen the pNR range "
                  f"downward (add {', '.join(f'{p:g}' for p in nxt)})")  # fmt: skip
        return GroupResult(g, points, best, optimum, EDGE, reason, nxt)
    return GroupResult(g, points, best, optimum, USED, "", [])


@dataclass
class Analysis:
    """The result of :func:`analyze`.

    Attributes:
        trials: every trial given.
        used: the usable trials, identical configurations folded.
        skipped: (trial, reason) of every trial left out.
        folded: how many trials were folded into another (same knobs and seed).
        groups: every strength group with its status and suggested pNR.
        centre: e_opt in log space with its range; None when the sweep cannot support one.
        reg_error: trial id -> log10(mean_e_w_per_pnr) - log10(e_opt) (empty without e_opt).
        metric: the validation metric the optima are located on.
    """

    trials: list[Trial]
    used: list[Trial]
    skipped: list[tuple[Trial, str]]
    folded: int
    groups: list[GroupResult]
    centre: Centre | None
    reg_error: dict[str, float]
    metric: str = DEFAULT_OBJECTIVE

    @property
    def e_opt(self) -> float | None:
        return 10**self.centre.x if self.centre else None

    @property
    def e_opt_low(self) -> float | None:
        return 10**self.centre.low if self.centre else None

    @property
    def e_opt_high(self) -> float | None:
        return 10**self.centre.high if self.centre else None

    @property
    def usable_groups(self) -> list[GroupResult]:
        return [g for g in self.groups if g.status == USED]

    def cannot_support(self) -> list[str]:
        """Why there is no e_opt and what to run next (empty when there is one)."""
        if self.centre is not None:
            return []
        if not self.groups:
            why = f"no usable trial among {len(self.trials)}"
            return [f"This sweep cannot support an e_opt: {why}.",
                    f"Run next: a sweep whose trials finish with {self.metric} and "
                    "mean_e_w_per_pnr."]  # fmt: skip
        lines = [
            f"This sweep cannot support an e_opt: no strength group has its best {self.metric} "
            f"at an interior pNR with at least {MIN_DISTINCT_PNR} distinct pNR tried.",
            "Run next (e.g. space.overrides.pnr: {choices: [...]} with search: {sampler: grid}):",
        ]
        for g in self.groups:
            todo = f"add pNR {', '.join(f'{p:g}' for p in g.next_pnr)}" if g.next_pnr else g.reason
            todo += f" ({g.range_note})" if g.next_pnr and g.range_note else ""
            lines.append(f"  {g.label}: tried pNR {', '.join(f'{p:g}' for p in g.pnrs)}; {todo}")
        return lines


def analyze(
    trials: Iterable[Trial],
    bins: int = 5,
    metric: str = DEFAULT_OBJECTIVE,
    pnr_range: tuple[float, float] | None = None,
) -> Analysis:
    """e_opt with its range, every trial's regularization error and the suggested pNR per
    strength (see the module doc), with the optima located on ``metric`` in its catalogue
    direction; pNR to add outside ``pnr_range`` (the space's, when known) are marked. Never raises on unusable data: an analysis without usable groups has ``centre``
    None and says why in :meth:`Analysis.cannot_support`.

    Raises:
        ValueError: ``metric`` cannot select (unknown, no direction, or of the test split).
    """
    if metric not in validation_metrics():
        raise ValueError(
            check_selectable(metric)
            or f"{metric!r} is no validation metric; locate optima on one of: "
            f"{', '.join(validation_metrics())}"
        )
    trials = [replace(t, metric=metric) for t in trials]
    configs: dict[tuple, list[Trial]] = {}
    for t in trials:
        configs.setdefault(config_key(t, with_seed=False), []).append(t)
    skipped, kept = [], []
    for t in trials:
        own = t.skip_reason
        if own:
            skipped.append((t, own))
            continue
        # A seed that survived while its siblings diverged or still run does not stand for
        # its configuration: the configuration waits until every run of it counts.
        same = configs[config_key(t, with_seed=False)]
        why = incomplete((o.seed, o.skip_reason) for o in same)
        if why:
            skipped.append((t, f"its configuration is left out: {why}"))
        else:
            kept.append(t)
    used = fold_identical(kept)
    groups = [assess_group(g, pnr_range) for g in group_by_strength(used, bins)]
    usable = [g for g in groups if g.status == USED]
    centre = centre_and_range([g.group.trials for g in usable], _curve_xy) if usable else None
    reg_error: dict[str, float] = {}
    if centre is not None:
        e_opt = 10**centre.x
        reg_error = {t.trial_id: t.x - centre.x for t in used}
        for g in groups:
            ts = g.group.trials
            g.suggestion = suggest_pnr([t.pnr for t in ts], [t.mean_e_w for t in ts], e_opt)
    return Analysis(trials, used, skipped, len(kept) - len(used), groups, centre, reg_error, metric)


def pareto_front(trials: Iterable[Trial]) -> list[Trial]:
    """Usable trials no other beats on both validation accuracy and compression ratio, most
    accurate first."""
    pts = [t for t in trials if t.usable and t.compression_ratio is not None]
    return pareto_set(pts, lambda t: (-t.val_accuracy, -t.compression_ratio))
