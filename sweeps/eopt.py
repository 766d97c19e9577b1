"""The numbers behind e_opt: a group's optimum, the centre of several and its range, and the
pNR that puts a strength at e_opt. Pure functions on plain numbers (numpy only).

Coordinates: ``x = log10(e_w / pNR)`` (the weight change per mini-batch spans decades, so all
locating and averaging happens in log space) and ``y`` = validation accuracy.

* :func:`locate_optimum` — the x of a group's accuracy optimum: the best point, refined by a
  quadratic through it and its neighbours in x. On a sparse curve (a grid) that is one
  neighbour on each side: an exact parabola. Where two neighbours on each side lie within one
  decade of e_w/pNR (dense, e.g. random search) it is a least-squares fit over those five,
  which smooths the noise without reaching far along a curve that is not a parabola. The
  vertex is used only when the parabola opens downward, and is kept within half the distance
  to each neighbour: the measured best is nearer the optimum than its neighbours are. At an
  end of the curve there is nothing to fit on one side: the best point's x is returned.
* :func:`centre_and_range` — ``e_opt`` as the mean of the groups' optima in log space (their
  geometric mean), with a 95% percentile bootstrap over trials (each group's trials resampled
  with replacement, its optimum located again) and the spread across groups of where each
  group's optimum lies, by the fit and by its best trial (two estimates of the same place; on
  a noisy curve they differ, and the range must hold both).
* :func:`suggest_pnr` — fit ``log e_w`` against ``log pNR`` locally, between the two tried
  pNR whose e_w/pNR bracket e_opt (for weight decay e_w grows with pNR while the weights drift
  further between events, then saturates), solve ``e_w(pNR) / pNR = e_opt``, clamp to ≥ 1,
  and say when it extrapolates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
DENSE_SPAN = 1.0  # decades of e_w/pNR within which two neighbours per side count as dense

# A point on a group's curve: (x = log10 e_w/pNR, y = validation accuracy).
XY = tuple[float, float]


@dataclass(frozen=True)
class Optimum:
    x: float  # log10 of the optimum's e_w/pNR
    how: str  # "quadratic fit over N points" or why the best point's x is used as it is

    @property
    def e_w_per_pnr(self) -> float:
        return 10**self.x


def locate_optimum(points: Sequence[XY]) -> Optimum:
    """The optimum's x on one group's accuracy-vs-log(e_w/pNR) curve (see the module doc)."""
    if not points:
        raise ValueError("locate_optimum needs at least one point")
    pts = sorted(points)
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    i = int(np.argmax(ys))
    if len(pts) < 3:
        return Optimum(float(xs[i]), "best point (fewer than 3 points)")
    if i == 0 or i == len(pts) - 1:
        return Optimum(float(xs[i]), "best point (at an end of the curve)")
    dense = i >= 2 and i + 2 < len(pts) and xs[i + 2] - xs[i - 2] <= DENSE_SPAN
    lo, hi = (i - 2, i + 3) if dense else (i - 1, i + 2)
    wx, wy = xs[lo:hi], ys[lo:hi]
    if len(set(wx.tolist())) < 3:
        return Optimum(float(xs[i]), "best point (neighbours at the same x)")
    a, b, _ = np.polyfit(wx, wy, 2)
    if not a < 0:
        return Optimum(float(xs[i]), "best point (the neighbours do not bend down)")
    vertex = -b / (2 * a)
    cell = ((xs[i - 1] + xs[i]) / 2, (xs[i] + xs[i + 1]) / 2)
    return Optimum(
        float(min(max(vertex, cell[0]), cell[1])), f"quadratic fit over {hi - lo} points"
    )


@dataclass(frozen=True)
class Centre:
    """e_opt in log10, with its bootstrap interval and the spread of the groups' optima (fitted
    and best trial)."""

    x: float
    boot_low: float
    boot_high: float
    spread_low: float
    spread_high: float
    groups: int

    @property
    def low(self) -> float:
        """The range's lower end: the wider of the bootstrap interval and the groups' spread."""
        return min(self.boot_low, self.spread_low)

    @property
    def high(self) -> float:
        return max(self.boot_high, self.spread_high)


def centre_and_range(
    groups: Sequence[Sequence[object]],
    curve: Callable[[Sequence[object]], list[XY]],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Centre:
    """e_opt from usable groups: the mean of their optima's x, with a stratified bootstrap.

    Args:
        groups: each group's trials (any objects; resampled as they are).
        curve: turns a list of a group's trials into its curve points, so that replicates
            (same configuration, another seed) are averaged the same way in every resample.
        samples: bootstrap resamples.
        seed: the bootstrap's random seed (the range is reproducible).
    """
    if not groups:
        raise ValueError("centre_and_range needs at least one group")
    optima = [locate_optimum(curve(list(g))).x for g in groups]
    best_trials = [max(curve(list(g)), key=lambda p: p[1])[0] for g in groups]
    rng = np.random.default_rng(seed)
    centres = np.empty(samples)
    for s in range(samples):
        xs = []
        for g in groups:
            picks = rng.integers(0, len(g), len(g))
            xs.append(locate_optimum(curve([g[j] for j in picks])).x)
        centres[s] = np.mean(xs)
    boot_low, boot_high = np.percentile(centres, [2.5, 97.5])
    spread = optima + best_trials
    return Centre(float(np.mean(optima)), float(boot_low), float(boot_high),
                  min(spread), max(spread), len(groups))  # fmt: skip


LOOSE_K = 2 / 3  # from this exponent on, a factor 2 in e_opt moves pNR 8-fold or more


@dataclass(frozen=True)
class Suggestion:
    """The pNR that puts a strength at e_opt, and how much to trust it."""

    pnr: float | None  # None: no pNR reaches e_opt (see note)
    extrapolated: bool
    k: float | None  # fitted exponent of e_w ∝ pNR^k (None: one pNR tried, k = 0 assumed)
    note: str  # "" when it lies inside the tried range with a fitted slope

    def text(self) -> str:
        if self.pnr is None:
            return "none"
        # Two significant digits: the fit is not more precise than that.
        return f"{float(f'{self.pnr:.2g}'):g}" + (" (extrapolated)" if self.extrapolated else "")


def suggest_pnr(pnrs: Sequence[float], e_ws: Sequence[float], e_opt: float) -> Suggestion:
    """Solve ``e_w(pNR) / pNR = e_opt`` on the group's own e_w(pNR), fitted locally.

    ``log e_w`` against ``log pNR`` is rarely one straight line over decades of pNR: for weight
    decay e_w grows with pNR while the weights have room to drift and saturates once they
    settle, and a strength that kills the weights at small pNR (e_w collapses towards zero)
    would bend a single global fit far off. So the fit is local: replicates are averaged per
    pNR; a pNR whose e_w/pNR lies below that of some larger pNR is left out (the weights
    collapsed there: that branch does not reach e_opt); between the two tried pNR whose
    e_w/pNR bracket e_opt, ``log e_w`` is the straight line through them (a power law
    ``c·pNR^k`` is recovered exactly); beyond the tried range, the line through the two
    outermost pNR on that side is extended, and the suggestion is marked as extrapolated.

    Args:
        pnrs: each trial's pNR.
        e_ws: each trial's mean e_w per event (> 0).
        e_opt: the target weight change per mini-batch (> 0).
    """
    if not pnrs or len(pnrs) != len(e_ws):
        raise ValueError("suggest_pnr needs one e_w per pNR, and at least one")
    if not e_opt > 0:
        raise ValueError(f"e_opt must be > 0, got {e_opt}")
    by_pnr: dict[float, list[float]] = {}
    for p, e in zip(pnrs, e_ws, strict=True):
        by_pnr.setdefault(math.log10(p), []).append(math.log10(e))
    lp = sorted(by_pnr)
    le = [float(np.mean(by_pnr[x])) for x in lp]
    target = math.log10(e_opt)
    if len(lp) == 1:
        return _solved(lp[0], le[0], None, target, True, "one pNR tried: e_w assumed "
                       "independent of pNR")  # fmt: skip
    # The branch that reaches e_opt: e_w/pNR falls as pNR grows. Walk down from the largest
    # pNR and drop a pNR whose e_w/pNR is below a larger pNR's.
    keep, dropped, top = [], [], -math.inf
    for i in reversed(range(len(lp))):
        y = le[i] - lp[i]
        if y >= top:
            keep.append(i)
            top = y
        else:
            dropped.append(10 ** lp[i])
    keep.reverse()
    note = ""
    if dropped:
        note = (f"left out pNR {', '.join(f'{p:g}' for p in sorted(dropped))}: e_w/pNR there is "
                "below a larger pNR's (the weights collapsed)")  # fmt: skip
    xs, ys = [lp[i] for i in keep], [le[i] for i in keep]
    if len(xs) == 1:
        return _solved(xs[0], ys[0], None, target, True,
                       _join(note, "one usable pNR: e_w assumed independent of pNR"))  # fmt: skip
    per_step = [y - x for x, y in zip(xs, ys, strict=True)]  # log10 e_w/pNR, falling
    if target > per_step[0]:
        j, outside = 0, True  # needs a smaller pNR than any tried
    elif target < per_step[-1]:
        j, outside = len(xs) - 2, True  # needs a larger pNR than any tried
    else:
        j = next(i for i in range(len(xs) - 1) if per_step[i] >= target >= per_step[i + 1])
        outside = False
    k = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j])
    if outside:
        note = _join(note, f"outside the tried pNR {10 ** lp[0]:.4g}–{10 ** lp[-1]:.4g}")
    return _solved(xs[j], ys[j], k, target, outside, note)


def _solved(
    x0: float, y0: float, k: float | None, target: float, extrapolated: bool, note: str
) -> Suggestion:
    """The pNR where ``log e_w = y0 + k·(log pNR − x0)`` gives ``log(e_w/pNR) = target``."""
    if k is not None and k >= 1 - 1e-6:
        return Suggestion(None, False, k, _join(note, f"e_w grows as fast as pNR or faster "
                          f"there (k = {k:.2f}): no pNR brings e_w/pNR to e_opt"))  # fmt: skip
    slope = k or 0.0
    logp = (y0 - slope * x0 - target) / (1 - slope)
    pnr = 10**logp
    if pnr < 1:
        note = _join(note, f"clamped to 1 (the fit gives {pnr:.2g}): even pNR = 1 changes the "
                     "weights less than e_opt per step; use a stronger setting")  # fmt: skip
        pnr, extrapolated = 1.0, True
    elif slope >= LOOSE_K:
        # pNR ∝ e_opt^(−1/(1−k)): near k = 1 a small error in e_opt is a large one in pNR
        # (gradual pruning fits k ≈ 0.8–0.9), so the number must not read as precise.
        note = _join(note, f"e_w grows almost as fast as pNR here (k = {slope:.2f}): a factor "
                     f"2 in e_opt moves this pNR {2 ** (1 / (1 - slope)):.0f}-fold, so it is a "
                     "loose hint")  # fmt: skip
    return Suggestion(float(pnr), extrapolated, k, note)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
