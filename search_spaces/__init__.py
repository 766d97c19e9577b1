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

import importlib
from collections.abc import Callable, Mapping
from typing import Any

# name -> "module:function"; imported lazily. A new method is one function plus one line here.
SPACES: dict[str, str] = {
    "weight_decay": "search_spaces.pnr:weight_decay",
    "uniform_noise": "search_spaces.pnr:uniform_noise",
    "gaussian_noise": "search_spaces.pnr:gaussian_noise",
    "prune": "search_spaces.pnr:prune",
    "quantize": "search_spaces.pnr:quantize",
    "svd": "search_spaces.lowrank:svd",
    "tiled_svd": "search_spaces.lowrank:tiled_svd",
    "tucker2": "search_spaces.lowrank:tucker2",
    "mixed": "search_spaces.mixed:mixed",
    "funnel": "search_spaces.funnel:funnel",
    "nuclear": "search_spaces.nuclear:nuclear",
}

RANGE_KEYS = {"low", "high", "log", "step", "choices"}


def get_space(name: str) -> Callable[[Any], None]:
    """The space function registered under ``name``; unknown names raise ``ValueError``."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; valid: {', '.join(sorted(SPACES))}")
    module, fn = SPACES[name].split(":")
    return getattr(importlib.import_module(module), fn)


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
        if kind == "range":
            low, high = o.get("low", low), o.get("high", high)
            step, log = o.get("step", step), o.get("log", log)
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

    def __init__(self, name: str, overrides: Mapping[str, Any] | None = None) -> None:
        get_space(name)  # fail now on an unknown name
        self.name = name
        self.overrides = dict(overrides or {})

    def __call__(self, trial: Any) -> dict[str, Any]:
        narrowed = NarrowedTrial(trial, self.overrides)
        get_space(self.name)(narrowed)
        return dict(narrowed.fixed)


def define_by_run(name: str, overrides: Mapping[str, Any] | None = None) -> DefineByRun:
    """The define-by-run function of space ``name`` narrowed by ``overrides``."""
    return DefineByRun(name, overrides)


class _Recorder:
    """A stand-in trial that records every knob a space asks for and returns a chosen value."""

    def __init__(self, pick: Mapping[str, Any] | None = None) -> None:
        self.pick = dict(pick or {})
        self.knobs: dict[str, dict[str, Any]] = {}

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.knobs[name] = {"kind": "float", "low": low, "high": high, "log": log, "step": step}
        return self.pick.get(name, low)

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.knobs[name] = {"kind": "int", "low": low, "high": high, "log": log, "step": step}
        return self.pick.get(name, low)

    def suggest_categorical(self, name, choices):
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
    seen: set[tuple] = set()
    while pending:
        pick = pending.pop()
        knobs = record(name, overrides, pick)
        key = tuple(sorted((k, str(v)) for k, v in knobs.items()))
        if key in seen:
            continue
        seen.add(key)
        found.append(knobs)
        for k, d in knobs.items():  # explore other values of categoricals that choose branches
            if d["kind"] == "categorical" and k not in pick:
                for c in d["choices"][1:]:
                    pending.append({**pick, k: c})
    return found


def check_overrides(
    name: str, overrides: Mapping[str, Any], where: str = "space.overrides"
) -> list[str]:
    """Problems with a spec's overrides of space ``name`` (unknown knobs, malformed ranges)."""
    try:
        get_space(name)
    except ValueError as e:
        return [f"space.name: {e}"]
    knobs: set[str] = set()
    for b in branches(name):
        knobs |= set(b)
    problems = []
    for knob, o in overrides.items():
        path = f"{where}.{knob}"
        if knob not in knobs:
            problems.append(
                f"{path}: space {name!r} has no knob {knob!r}; its knobs: {', '.join(sorted(knobs))}"
            )
            continue
        if isinstance(o, Mapping):
            bad = set(o) - RANGE_KEYS
            if bad:
                problems.append(
                    f"{path}: unknown key(s) {sorted(bad)}; use low/high/log/step, or choices"
                )
            elif "choices" in o and (not isinstance(o["choices"], list) or not o["choices"]):
                problems.append(f"{path}.choices: must be a non-empty list")
            elif "low" in o and "high" in o and not o["low"] <= o["high"]:
                problems.append(f"{path}: low {o['low']} must not exceed high {o['high']}")
            elif o.get("log") and o.get("low", 1) <= 0:
                problems.append(f"{path}.low: a log range needs low > 0, got {o.get('low')}")
        elif isinstance(o, list) and not o:
            problems.append(f"{path}: an empty list of choices")
    return problems


def extreme_values(knob: Mapping[str, Any]) -> list[Any]:
    """Values worth validating for a knob distribution: its ends, every choice, or the fixed value."""
    if knob["kind"] == "fixed":
        return [knob["value"]]
    if knob["kind"] == "categorical":
        return list(knob["choices"])
    return [knob["low"], knob["high"]]


__all__ = [
    "SPACES",
    "NarrowedTrial",
    "branches",
    "check_overrides",
    "define_by_run",
    "extreme_values",
    "get_space",
]
