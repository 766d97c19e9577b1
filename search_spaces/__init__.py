"""Optuna define-by-run search spaces, registered by name, and narrowing them from YAML.

A space is a plain function ``space(trial)`` that calls ``trial.suggest_*``. A sweep spec
narrows or fixes its knobs without Python::

    space:
      name: prune
      overrides:
        pnr: {low: 1, high: 500}      # narrower range (log scale kept)
        rate: 0.9                     # fixed: not searched
        lr: {choices: [0.01, 0.05]}   # a categorical choice instead
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from trainers.registry import Registry
from trainers.validation import Problem, Section, did_you_mean, shown, validate

# name -> "module:function"; imported lazily. A new method is one function plus one line here.
SPACES: Registry[Callable[[Any], None]] = Registry(
    "search space",
    {
        "weight_decay": "search_spaces.pnr:weight_decay",
        "uniform_noise": "search_spaces.pnr:uniform_noise",
        "gaussian_noise": "search_spaces.pnr:gaussian_noise",
        "prune": "search_spaces.pnr:prune",
        "quantize": "search_spaces.pnr:quantize",
        "svd": "search_spaces.lowrank:svd",
        "tiled_svd": "search_spaces.lowrank:tiled_svd",
        "tucker2": "search_spaces.lowrank:tucker2",
        "cp": "search_spaces.lowrank:cp",
        "mixed": "search_spaces.mixed:mixed",
        "funnel": "search_spaces.funnel:funnel",
        "nuclear": "search_spaces.nuclear:nuclear",
    },
)

RANGE_KEYS = {"low", "high", "log", "step", "choices"}


def get_space(name: str) -> Callable[[Any], None]:
    """The space function registered under ``name``; unknown names raise ``ValueError``."""
    return SPACES[name]


class NarrowedTrial:
    """Wraps an Optuna trial and applies a spec's overrides to each ``suggest_*`` call.

    Fixed values are not suggested (Optuna does not search them); they are collected in
    ``fixed`` and returned by :func:`define_by_run` as constants.
    """

    def __init__(self, trial: Any, overrides: Mapping[str, Any]) -> None:
        self._trial = trial
        self._overrides = overrides
        self.fixed: dict[str, Any] = {}

    def _override(self, name: str) -> tuple[str, Any]:
        if name not in self._overrides:
            return "none", None
        o = self._overrides[name]
        if isinstance(o, Mapping):
            return ("choices", list(o["choices"])) if "choices" in o else ("range", o)
        if isinstance(o, list):
            return "choices", o
        return "fixed", o

    def _suggest_range(
        self, suggest: Any, name: str, low: Any, high: Any, step: Any, log: bool
    ) -> Any:
        """``suggest_float`` / ``suggest_int`` with the override applied."""
        kind, o = self._override(name)
        if kind == "fixed":
            self.fixed[name] = o
            return o
        if kind == "choices":
            return self._trial.suggest_categorical(name, o)
        if kind == "range":  # an end left out (or null) keeps the space's
            low = low if o.get("low") is None else o["low"]
            high = high if o.get("high") is None else o["high"]
            step = step if o.get("step") is None else o["step"]
            log = log if o.get("log") is None else o["log"]
            if suggest == getattr(self._trial, "suggest_int", None):
                # 1e3 is a float to YAML; an integer knob takes it as the integer it is.
                low, high, step = (
                    int(v) if isinstance(v, float) and v.is_integer() else v
                    for v in (low, high, step)
                )
        return suggest(name, low, high, step=step, log=log)

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._suggest_range(self._trial.suggest_float, name, low, high, step, log)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return self._suggest_range(self._trial.suggest_int, name, low, high, step, log)

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        kind, o = self._override(name)
        if kind == "fixed":
            self.fixed[name] = o
            return o
        if kind == "choices":
            choices = o
        return self._trial.suggest_categorical(name, choices)


class DefineByRun:
    """A picklable function for ``OptunaSearch(space=...)`` (Tune saves its searcher with
    pickle): runs space ``name`` with ``overrides`` applied and returns the fixed knobs."""

    def __init__(
        self,
        name: str,
        overrides: Mapping[str, Any] | None = None,
        seeds: list[int] | None = None,
    ) -> None:
        get_space(name)  # fail now on an unknown name
        self.name = name
        self.overrides = dict(overrides or {})
        self.seeds = seeds

    def __call__(self, trial: Any) -> dict[str, Any]:
        narrowed = NarrowedTrial(trial, self.overrides)
        get_space(self.name)(narrowed)
        if self.seeds:  # replicates: the training seed as one more grid axis
            trial.suggest_categorical("seed", self.seeds)
        return dict(narrowed.fixed)


def define_by_run(
    name: str, overrides: Mapping[str, Any] | None = None, seeds: list[int] | None = None
) -> DefineByRun:
    """The define-by-run function of space ``name`` narrowed by ``overrides``; with ``seeds``,
    each trial also draws its training seed from them (a grid's replicates)."""
    return DefineByRun(name, overrides, seeds)


class _Recorder:
    """A stand-in trial that records every knob a space asks for and returns a chosen value."""

    def __init__(self, pick: Mapping[str, Any] | None = None) -> None:
        self.pick = dict(pick or {})
        self.knobs: dict[str, dict[str, Any]] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> Any:
        self.knobs[name] = {"kind": "float", "low": low, "high": high, "log": log, "step": step}
        return self.pick.get(name, low)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> Any:
        self.knobs[name] = {"kind": "int", "low": low, "high": high, "log": log, "step": step}
        return self.pick.get(name, low)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        taken = self.pick.get(name, choices[0])
        self.knobs[name] = {"kind": "categorical", "choices": list(choices), "taken": taken}
        return taken


def record(
    name: str, overrides: Mapping[str, Any] | None = None, pick: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Run space ``name`` once without Optuna: ``{knob: its distribution}`` after the overrides,
    taking the ``pick`` value for any knob named there (else a range's low end, the first choice)."""
    rec = _Recorder(pick)
    narrowed = NarrowedTrial(rec, overrides or {})
    get_space(name)(narrowed)
    knobs = dict(rec.knobs)
    for k, v in narrowed.fixed.items():
        knobs[k] = {"kind": "fixed", "value": v}
    return knobs


def branches(
    name: str, overrides: Mapping[str, Any] | None = None
) -> list[dict[str, dict[str, Any]]]:
    """Every branch of a conditional space, each as ``{knob: its distribution}`` (after the
    overrides). A branch is taken by choosing each categorical knob's values in turn; a
    categorical records the value ``taken`` in that branch."""
    found: list[dict[str, dict[str, Any]]] = []
    pending: list[dict[str, Any]] = [{}]
    seen: set[tuple[Any, ...]] = set()
    while pending:
        pick = pending.pop()
        knobs = record(name, overrides, pick)
        # A branch is a set of knobs: values of a categorical that ask for the same knobs are
        # one branch (their values are checked as its choices), so this stays small for grids.
        key = tuple(sorted((k, d["kind"]) for k, d in knobs.items()))
        if key in seen:
            continue
        seen.add(key)
        found.append(knobs)
        for k, d in knobs.items():  # explore other values of categoricals that choose branches
            if d["kind"] == "categorical" and k not in pick:
                for c in d["choices"][1:]:
                    pending.append({**pick, k: c})
    return found


def _scalar(value: Any) -> Any:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError(f"a choice is a number, text, true/false or null, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


class RangeOverride(Section):
    """A narrower (or wider) range of a numeric knob; unset ends keep the space's."""

    low: float | None = Field(None, description="lowest value searched")
    high: float | None = Field(None, description="highest value searched")
    log: bool | None = Field(None, description="search on a log scale")
    step: float | None = Field(None, gt=0, description="spacing of the values searched")


class ChoicesOverride(Section):
    """The values a knob takes (a categorical choice, or a grid's values)."""

    choices: list[Annotated[Any, AfterValidator(_scalar)]] = Field(min_length=1)


def _declared_knobs(name: str) -> dict[str, dict[str, Any]]:
    """Every knob space ``name`` can ask for, over all its branches, as first declared."""
    knobs: dict[str, dict[str, Any]] = {}
    for b in branches(name):
        for k, d in b.items():
            knobs.setdefault(k, d)
    return knobs


def override_problems(
    name: str, overrides: Mapping[str, Any], where: str = "space.overrides"
) -> list[Problem]:
    """Problems with a spec's overrides of space ``name``: unknown knobs, malformed ranges or
    choices (wrong types, NaN, low > high, a log range from 0), a range for a categorical knob,
    and values the space itself refuses."""
    declared = _declared_knobs(name)
    problems: list[Problem] = []
    for knob, o in overrides.items():
        path = f"{where}.{knob}"
        if knob not in declared:
            problems.append(
                Problem(
                    path,
                    f"space {name!r} has no knob {str(knob)!r}{did_you_mean(knob, declared)}; "
                    f"its knobs: {', '.join(sorted(declared))}",
                )
            )
            continue
        if isinstance(o, Mapping) and "choices" in o:
            problems += validate(ChoicesOverride, o, path)[1]
        elif isinstance(o, Mapping):
            bad = [str(k) for k in o if k not in RangeOverride.model_fields]
            if bad:
                problems.append(
                    Problem(
                        path, f"unknown key(s) {sorted(bad)}; use low/high/log/step, or choices"
                    )
                )
                continue
            found = validate(RangeOverride, o, path)[1]
            if not found and declared[knob]["kind"] == "categorical":
                found = [
                    Problem(
                        path,
                        f"{knob} is a choice among {declared[knob]['choices']}, not a range; "
                        "give choices: [...] or one value",
                    )
                ]
            problems += found
        elif isinstance(o, list):
            if not o:
                problems.append(Problem(path, "an empty list of choices"))
            problems += validate(ChoicesOverride, {"choices": o}, path)[1] if o else []
        else:
            try:
                _scalar(o)
            except ValueError as e:
                problems.append(Problem(path, str(e)))
    # The effective ranges of the overrides that are well formed (a space default may still
    # contradict a new end: low 1 kept, high 0 given).
    bad_keys = {p.path.removeprefix(f"{where}.").split(".")[0] for p in problems}
    sound = {k: o for k, o in overrides.items() if str(k) not in bad_keys}
    try:
        narrowed = branches(name, sound)
    except Exception as e:  # e.g. a branch-choosing value the space does not know
        return [*problems, Problem(where, f"space {name!r} cannot take these overrides: {e}")]
    for b in narrowed:
        for knob, d in b.items():
            problems += _range_problems(knob, d, f"{where}.{knob}")
    return list(dict.fromkeys(problems))


def _range_problems(knob: str, d: Mapping[str, Any], path: str) -> list[Problem]:
    """Problems of an effective (overridden) range that Optuna would refuse."""
    if d["kind"] not in ("int", "float"):
        return []
    lo, hi, log, step = d["low"], d["high"], d["log"], d["step"]
    if d["kind"] == "int":
        for end, v in (("low", lo), ("high", hi), ("step", step)):
            if v is not None and not float(v).is_integer():
                return [Problem(f"{path}.{end}", f"{knob} is an integer knob; got {v}")]
    if lo > hi:
        return [Problem(path, f"low {lo} must not exceed high {hi}")]
    if log and lo <= 0:
        return [Problem(f"{path}.low", f"a log range needs low > 0, got {lo}")]
    # Optuna takes step 1 on a log range of integers only (it is their spacing anyway).
    if log and step is not None and not (d["kind"] == "int" and step == 1):
        return [Problem(path, f"a log range takes no step (got step {step}); drop one of them")]
    return []


def check_overrides(
    name: str, overrides: Mapping[str, Any], where: str = "space.overrides"
) -> list[str]:
    """Problems with a spec's overrides of space ``name``, one line each (see
    :func:`override_problems`); an unknown space name is one too."""
    if name not in SPACES:
        return [str(Problem("space.name", str(SPACES.unknown(name))))]
    return [str(p) for p in override_problems(name, overrides, where)]


def grid_space(
    name: str, overrides: Mapping[str, Any], where: str = "space.overrides"
) -> tuple[dict[str, list[Any]], list[Problem]]:
    """The grid of space ``name`` narrowed by ``overrides``: ``{knob: its values}`` over the
    searched knobs (fixed ones are not searched), and the problems that make it no grid: a
    knob searched over a range, several branches of a conditional space, a repeated value."""
    found = branches(name, overrides)
    if len(found) > 1:
        first = found[0]
        choosers = [
            k
            for k, d in first.items()
            if d["kind"] == "categorical"
            and any(b.get(k, {}).get("taken") != d["taken"] for b in found[1:])
        ] or [k for k, d in first.items() if d["kind"] == "categorical"]
        knob = choosers[0] if choosers else "the branch-choosing knob"
        values = first.get(knob, {}).get("choices", [])
        return {}, [
            Problem(
                f"{where}.{knob}",
                f"space {name!r} is conditional: {knob} ({', '.join(map(str, values))}) chooses "
                f"between branches with different knobs, which one grid cannot hold; fix it "
                f"(e.g. {knob}: {values[0] if values else '...'}) and run one grid per value",
            )
        ]
    grid: dict[str, list[Any]] = {}
    problems = []
    for knob, d in (found[0] if found else {}).items():
        if d["kind"] == "categorical":
            grid[knob] = list(d["choices"])
            if len(set(map(repr, d["choices"]))) < len(d["choices"]):
                problems.append(
                    Problem(f"{where}.{knob}", "a grid's choices must not repeat a value")
                )
        elif d["kind"] != "fixed":
            scale = " (log)" if d.get("log") else ""
            problems.append(
                Problem(
                    f"{where}.{knob}",
                    f"searched over [{d['low']}, {d['high']}]{scale}; give choices: [...] for a "
                    "grid (or one fixed value)",
                )
            )
    return grid, problems


def extreme_values(knob: Mapping[str, Any]) -> list[Any]:
    """Values worth validating for a knob distribution: its ends, every choice, or the fixed value."""
    if knob["kind"] == "fixed":
        return [knob["value"]]
    if knob["kind"] == "categorical":
        return list(knob["choices"])
    return [knob["low"], knob["high"]]


__all__ = [
    "SPACES",
    "ChoicesOverride",
    "NarrowedTrial",
    "RangeOverride",
    "branches",
    "check_overrides",
    "define_by_run",
    "extreme_values",
    "get_space",
    "grid_space",
    "override_problems",
]
