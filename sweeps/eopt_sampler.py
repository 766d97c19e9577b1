"""An Optuna sampler that searches the compression strength with TPE and sets pNR from e_opt.

The papers' rule (docs/design.md §9.1): accuracy is governed by the weight change per step,
``e_w / pNR``, with an optimum ``e_opt`` that hardly depends on the strength. So pNR need not
be searched as a free knob: once e_opt is known, each strength's pNR follows from how its
e_w grows with pNR. The sampler runs in phases, each trial's recorded in its user attr
``eopt_phase``:

* ``pilot`` — a few strengths (``pilot_strengths``), each at a few pNR spread log-uniformly
  over the space's pNR range (``pilot_pnrs``); the other knobs that are no strength (lr, …)
  at the middle of their range, so that each strength's curve varies in pNR only. Skipped
  when e_opt is given (taken from an earlier sweep), and cut short as soon as the finished
  pilot trials place e_opt.
* ``probe`` — no e_opt estimate yet (pilot trials still running, or no strength found an
  interior optimum) or no e_w measured yet: TPE for the other knobs, a log-uniform pNR.
* ``guided`` — TPE proposes every knob but pNR; pNR is solved from a local log-log fit of the
  finished trials' e_w against pNR (and the other knobs, weighted towards the proposed
  strength) so that e_w/pNR lands at a target drawn around e_opt within its range (its
  centre ± half a decade at most). A strength whose e_w does not depend on pNR (fitted exponent ≈ 0) gets
  ``pNR = e_w / target`` directly, without a pilot of its own.
* ``explore`` — a share ``explore`` of the guided trials takes a log-uniform pNR instead, so
  that the curves keep points away from e_opt and a misplaced estimate can move.

e_opt is re-estimated from the study's finished trials whenever one finishes, with the
analysis of ``compsweep analyze`` (:func:`sweeps.analysis.analyze`): it then replaces a given
one. With no strength at an interior optimum after the pilot, the best pilot trial's
``e_w/pNR`` (refined on the pooled curve) stands in, ± half a decade.

Each finished trial must carry its ``mean_e_w`` as the user attr :data:`E_W_ATTR` (the sweep's
searcher sets it from the trial's final result before telling Optuna). Plain Optuna: no Ray
here; all state lives in the study, so a resumed study continues with a new instance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.search_space import intersection_search_space
from optuna.trial import FrozenTrial, TrialState

from sweeps.analysis import NOT_STRENGTH, Trial, analyze
from sweeps.eopt import locate_optimum
from trainers.metrics import DEFAULT_OBJECTIVE

E_W_ATTR = "mean_e_w"  # user attr of a finished trial: its final mean e_w per event
PHASE_ATTR = "eopt_phase"  # user attr: pilot | probe | guided | explore
SLOT_ATTR = "eopt_pilot_slot"  # user attr of a pilot trial: its place in the pilot plan
TARGET_ATTR = "eopt_target"  # user attr of a guided trial: the e_w/pNR it aims at
SOURCE_ATTR = "eopt_source"  # user attr of a guided trial: where its e_opt came from
ROUGH_HALF_WIDTH = 0.5  # decades either side of a rough or very wide estimate
KERNEL_WIDTHS = (0.15, 0.3, math.inf)  # knob-space widths tried for the local e_w fit
MIN_FIT_POINTS = 3  # finished trials (with distinct pNR) a local fit needs


@dataclass(frozen=True)
class Estimate:
    """e_opt in log10 with its range, and where it came from (sweep | given | rough)."""

    x: float
    low: float
    high: float
    source: str


def _quantile(dist: BaseDistribution, q: float) -> Any:
    """The value at quantile ``q`` of a distribution, in its (log) scale."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(q * len(dist.choices)), len(dist.choices) - 1)]
    assert isinstance(dist, FloatDistribution | IntDistribution)
    lo, hi = float(dist.low), float(dist.high)
    if dist.log:
        v = 10 ** (math.log10(lo) + q * (math.log10(hi) - math.log10(lo)))
    else:
        v = lo + q * (hi - lo)
    return _snap(dist, v)


def _snap(dist: BaseDistribution, v: float) -> Any:
    """``v`` clamped into the distribution, on its step grid when it has one."""
    assert isinstance(dist, FloatDistribution | IntDistribution)
    v = min(max(v, dist.low), dist.high)
    if dist.step is not None:
        v = dist.low + round((v - dist.low) / dist.step) * dist.step
        v = min(max(v, dist.low), dist.high)
    return int(round(v)) if isinstance(dist, IntDistribution) else float(v)


def _unit(dist: BaseDistribution, v: Any) -> float:
    """A knob value mapped to [0, 1] over its range (log scale where the space is)."""
    if isinstance(dist, CategoricalDistribution):
        n = len(dist.choices)
        return dist.choices.index(v) / (n - 1) if n > 1 else 0.0
    assert isinstance(dist, FloatDistribution | IntDistribution)
    lo, hi, x = float(dist.low), float(dist.high), float(v)
    if dist.log:
        lo, hi, x = math.log10(lo), math.log10(hi), math.log10(x)
    return (x - lo) / (hi - lo) if hi > lo else 0.0


def solve_pnr(
    points: Sequence[tuple[float, dict[str, float], float]],
    at: dict[str, float],
    target: float,
) -> float | None:
    """The pNR at which the fitted ``e_w(pNR) / pNR`` equals ``target`` at knobs ``at``.

    ``log e_w = a + k·log pNR + Σ b_j (z_j − at_j)`` is fitted by weighted least squares over
    ``points`` (pNR, knobs in [0, 1], e_w), the weights a Gaussian kernel in knob space around
    ``at``: nearby strengths dominate, and the kernel widens (up to a global fit) until enough
    distinct pNR carry weight. ``k`` is kept within [−0.5, 0.9] (a single noisy pair of pNR
    must not make e_w/pNR look flat). None: too few points to fit.
    """
    if len(points) < 1:
        return None
    names = sorted(at)
    lp = np.array([math.log10(p) for p, _, _ in points])
    le = np.array([math.log10(e) for _, _, e in points])
    z = np.array([[knobs.get(n, at[n]) - at[n] for n in names] for _, knobs, _ in points])
    z = z.reshape(len(points), len(names))
    dist2 = (z**2).sum(axis=1)
    t = math.log10(target)
    for h in KERNEL_WIDTHS:
        w = np.ones(len(points)) if math.isinf(h) else np.exp(-0.5 * dist2 / h**2)
        carrying = {round(x, 6) for x, wi in zip(lp, w, strict=True) if wi > 0.1}
        if len(carrying) >= 2 and w.sum() >= MIN_FIT_POINTS:
            break
    else:
        # One pNR only: e_w taken as independent of pNR (k = 0), nearest strengths weighted.
        w = np.exp(-0.5 * dist2 / KERNEL_WIDTHS[1] ** 2) + 1e-12
        a = float((w * le).sum() / w.sum())
        return 10 ** (a - t)
    design = np.column_stack([np.ones(len(points)), lp, z])
    sw = np.sqrt(w)[:, None]
    ridge = 1e-3 * np.eye(design.shape[1])
    ridge[0, 0] = 0.0
    lhs = (design * sw).T @ (design * sw) + ridge
    rhs = (design * sw).T @ (le * sw[:, 0])
    coef = np.linalg.solve(lhs, rhs)
    a, k = float(coef[0]), float(np.clip(coef[1], -0.5, 0.9))
    return 10 ** ((a - t) / (1 - k))


class EoptSampler(optuna.samplers.BaseSampler):
    """Strength by TPE, pNR by e_opt (see the module doc).

    Args:
        seed: seed of the pNR draws and of the inner TPE.
        metric: the validation metric the study optimizes (its first objective); e_opt is
            located on it, in its catalogue direction.
        e_opt: a known e_opt as ``(value, low, high)`` (e.g. from an earlier sweep): no pilot.
        pilot_strengths: strengths the pilot tries.
        pilot_pnrs: pNR per pilot strength, spread log-uniformly over the space's range.
        explore: share of guided trials that take a log-uniform pNR instead.
        pnr_param: the name of the pNR knob.
        bins: strength bins of the e_opt analysis.
        tpe_startup: finished trials before the inner TPE leaves random sampling.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        metric: str = DEFAULT_OBJECTIVE,
        e_opt: tuple[float, float, float] | None = None,
        pilot_strengths: int = 2,
        pilot_pnrs: int = 4,
        explore: float = 0.1,
        pnr_param: str = "pnr",
        bins: int = 5,
        tpe_startup: int = 5,
    ) -> None:
        if e_opt is not None and not 0 < e_opt[1] <= e_opt[0] <= e_opt[2]:
            raise ValueError(f"e_opt needs 0 < low <= value <= high, got {e_opt}")
        if pilot_strengths < 1 or pilot_pnrs < 3:
            raise ValueError("the pilot needs >= 1 strength and >= 3 pNR per strength")
        if not 0 <= explore < 1:
            raise ValueError(f"explore must be in [0, 1), got {explore}")
        self._rng = np.random.default_rng(seed)
        self._tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=tpe_startup)
        self.metric = metric
        self.given = None
        if e_opt is not None:
            value, low, high = (math.log10(v) for v in e_opt)
            self.given = Estimate(value, low, high, "given")
        self.pilot_strengths, self.pilot_pnrs = pilot_strengths, pilot_pnrs
        # The pilot plan: one pNR in each of pilot_pnrs equal slices of the log range, one
        # strength in each of pilot_strengths slices, placed within its slice by the seed (a
        # resumed sampler with the same seed has the same plan); the middle pNR first, as the
        # likelier ones to be good.
        plan = np.random.default_rng(seed)
        self._pnr_jitter = plan.uniform(0.2, 0.8, pilot_pnrs).tolist()
        self._strength_jitter = plan.uniform(0.2, 0.8, pilot_strengths).tolist()
        self._pnr_order = sorted(range(pilot_pnrs), key=lambda p: abs(p - (pilot_pnrs - 1) / 2))
        self.explore, self.pnr_param, self.bins = explore, pnr_param, bins
        self._cache: tuple[tuple[int, ...], Estimate | None] | None = None
        # trial id -> pilot slot (None: none) and phase, as decided: the frozen trial handed
        # to the sampler lags the attrs set on it.
        self._slot: dict[int, int | None] = {}
        self._phase: dict[int, str] = {}

    # -- Optuna's sampler interface -------------------------------------------------------

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._tpe.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._tpe.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The knobs every finished trial had, once the pilot is over (pilot trials are drawn
        knob by knob from the plan, in :meth:`sample_independent`)."""
        if self._pilot_slot(study, trial) is not None:
            return {}
        done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
        space = intersection_search_space(done)
        return space if self.pnr_param in space else {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        knobs = {
            name: self._tpe.sample_independent(study, trial, name, dist)
            for name, dist in search_space.items()
            if name != self.pnr_param
        }
        pnr_dist = search_space[self.pnr_param]
        estimate = self.estimate(study)
        points = self._points(study, search_space)
        pnr: float | None = None
        if estimate is None or not points:
            phase = "probe"
        elif self._rng.random() < self.explore:
            phase = "explore"
        else:
            phase = "guided"
            target = 10 ** self._target_x(estimate)
            at = {n: _unit(search_space[n], v) for n, v in knobs.items()}
            pnr = solve_pnr(points, at, target)
            study._storage.set_trial_user_attr(trial._trial_id, TARGET_ATTR, target)
            study._storage.set_trial_user_attr(trial._trial_id, SOURCE_ATTR, estimate.source)
        if pnr is None:
            pnr = _quantile(pnr_dist, float(self._rng.random()))
        self._set_phase(study, trial, phase)
        return {**knobs, self.pnr_param: _snap(pnr_dist, pnr)}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        slot = self._pilot_slot(study, trial)
        if slot is None:
            if param_name == self.pnr_param:
                self._set_phase(study, trial, "probe")
                return _quantile(param_distribution, float(self._rng.random()))
            return self._tpe.sample_independent(study, trial, param_name, param_distribution)
        strength, p = slot % self.pilot_strengths, self._pnr_order[slot // self.pilot_strengths]
        if param_name == self.pnr_param:
            return _quantile(param_distribution, (p + self._pnr_jitter[p]) / self.pilot_pnrs)
        if param_name in NOT_STRENGTH:  # how fast, not how hard: held at the middle
            return _quantile(param_distribution, 0.5)
        q = (strength + self._strength_jitter[strength]) / self.pilot_strengths
        return _quantile(param_distribution, q)

    def _target_x(self, estimate: Estimate) -> float:
        """log10 of a trial's target e_w/pNR: centred on e_opt, spread so that about 95% of
        the draws fall within its range, and clipped to it (at most ± half a decade)."""
        lo = max(estimate.low, estimate.x - ROUGH_HALF_WIDTH)
        hi = min(estimate.high, estimate.x + ROUGH_HALF_WIDTH)
        sd = max(estimate.x - lo, hi - estimate.x) / 2
        return float(np.clip(self._rng.normal(estimate.x, sd), lo, hi)) if sd > 0 else lo

    # -- e_opt and the e_w data -------------------------------------------------------------

    def estimate(self, study: optuna.Study) -> Estimate | None:
        """e_opt from the study's finished trials (the analysis of ``compsweep analyze``), else
        the given one, else (pilot over) a rough one from the best trial; None: none yet."""
        done = [t for t in self._finished(study)]
        key = tuple(t.number for t in done)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        est = self._own_estimate(done)
        if est is None:
            est = self.given
        if est is None and done and self._pilot_over(study):
            est = self._rough_estimate(done)
        self._cache = (key, est)
        return est

    def _finished(self, study: optuna.Study) -> list[FrozenTrial]:
        """Finished trials with a finite value, an e_w > 0 and a numeric pNR."""
        out = []
        for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True):
            e_w, pnr = t.user_attrs.get(E_W_ATTR), t.params.get(self.pnr_param)
            if not (isinstance(e_w, int | float) and e_w > 0 and math.isfinite(e_w)):
                continue
            if not isinstance(pnr, int | float) or pnr <= 0 or t.values is None:
                continue
            if math.isfinite(t.values[0]):
                out.append(t)
        return out

    def _analysis_trials(self, done: list[FrozenTrial]) -> list[Trial]:
        return [
            Trial(
                trial_id=str(t.number),
                method="",
                knobs=dict(t.params),
                val_accuracy=None,
                mean_e_w=float(t.user_attrs[E_W_ATTR]),
                mean_e_w_per_pnr=float(t.user_attrs[E_W_ATTR]) / float(t.params[self.pnr_param]),
                metrics={self.metric: float(t.values[0])},
            )
            for t in done
        ]

    def _own_estimate(self, done: list[FrozenTrial]) -> Estimate | None:
        if len(done) < 3:
            return None
        a = analyze(self._analysis_trials(done), bins=self.bins, metric=self.metric)
        if a.centre is None:
            return None
        c = a.centre
        return Estimate(c.x, min(c.low, c.x), max(c.high, c.x), "sweep")

    def _rough_estimate(self, done: list[FrozenTrial]) -> Estimate:
        trials = self._analysis_trials(done)
        x = locate_optimum([(t.x, t.score) for t in trials]).x
        return Estimate(x, x - ROUGH_HALF_WIDTH, x + ROUGH_HALF_WIDTH, "rough")

    def _points(
        self, study: optuna.Study, space: dict[str, BaseDistribution]
    ) -> list[tuple[float, dict[str, float], float]]:
        """(pNR, the other knobs in [0, 1], e_w) of every finished trial."""
        out = []
        for t in self._finished(study):
            knobs = {
                n: _unit(d, t.params[n])
                for n, d in space.items()
                if n != self.pnr_param and n in t.params and _fits(d, t.params[n])
            }
            out.append((float(t.params[self.pnr_param]), knobs, float(t.user_attrs[E_W_ATTR])))
        return out

    # -- the pilot ------------------------------------------------------------------------

    def _pilot_size(self) -> int:
        return 0 if self.given is not None else self.pilot_strengths * self.pilot_pnrs

    def _pilot_over(self, study: optuna.Study) -> bool:
        return self._slots_taken(study) >= self._pilot_size()

    def _slots_taken(self, study: optuna.Study) -> int:
        trials = study._get_trials(deepcopy=False, use_cache=False)
        return sum(1 for t in trials if SLOT_ATTR in t.user_attrs)

    def _pilot_slot(self, study: optuna.Study, trial: FrozenTrial) -> int | None:
        """This trial's place in the pilot plan, taken at its first sampling; None: no pilot."""
        if trial._trial_id in self._slot:
            return self._slot[trial._trial_id]
        latest = study._storage.get_trial(trial._trial_id)
        slot: int | None = latest.user_attrs.get(SLOT_ATTR)
        if slot is None and PHASE_ATTR not in latest.user_attrs and not self._located(study):
            taken = self._slots_taken(study)
            if taken < self._pilot_size():
                slot = taken
                study._storage.set_trial_user_attr(trial._trial_id, SLOT_ATTR, slot)
                self._set_phase(study, trial, "pilot")
        self._slot[trial._trial_id] = slot
        return slot

    def _located(self, study: optuna.Study) -> bool:
        """The finished trials already place e_opt: the rest of the pilot is not needed."""
        est = self.estimate(study)
        return est is not None and est.source == "sweep"

    def _set_phase(self, study: optuna.Study, trial: FrozenTrial, phase: str) -> None:
        if self._phase.get(trial._trial_id) == phase:
            return
        self._phase[trial._trial_id] = phase
        study._storage.set_trial_user_attr(trial._trial_id, PHASE_ATTR, phase)


def _fits(dist: BaseDistribution, v: Any) -> bool:
    """Whether a past trial's value lies in today's distribution (a narrowed space)."""
    if isinstance(dist, CategoricalDistribution):
        return v in dist.choices
    return isinstance(v, int | float) and dist.low <= v <= dist.high  # type: ignore[attr-defined]
