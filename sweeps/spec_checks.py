"""Validating a sweep spec in full, before anything is sent to the cluster.

Checks, in order, each run on every part the previous ones found sound: the sections' models
(types, bounds, names), the space overrides, the base ``train`` section and then the training
config of every branch of the space with each knob at both ends of its range (and at each
choice) on the real data and model (:func:`_train_problems`), the rules between sections, and
last what this machine must provide (a writable storage path, a study database it can open, a
reachable tracking store). A bad override does not stop the checks of the training configs: its
knob is held at the space's default mid-range. A :class:`~sweeps.spec.SpecError` lists every
problem at once, one line each, naming its field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from search_spaces import branches, extreme_values, grid_space, override_problems, record
from sweeps.searchers import eopt_problems
from sweeps.spec import KNOB_PATHS, SpecError, SweepSpec, trial_dict
from sweeps.tracking import check_tracking_uri
from trainers.config import read_mapping, validate_train
from trainers.metrics import DEFAULT_OBJECTIVE, METRICS, get_metric
from trainers.model_checks import model_problems
from trainers.validation import Problem, valid_sections, validate


def storage_problem(path: str) -> str | None:
    """Why sweep state could not be written under ``path`` on this machine, or None."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        return f"{p} is a file, not a folder"
    nearest = p
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        return f"{nearest} is a file, so {p} cannot be created"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"cannot write in {nearest}"
    return None


def study_storage_problem(url: str, here: bool = True) -> str | None:
    """Why Optuna could not keep a study in database ``url``, or None: a driver SQLAlchemy does
    not know; ``here`` (the sweep runs on this machine) also a driver not installed, or an SQLite
    database whose folder is missing or not writable (SQLite creates the file, not its folder).
    Remote databases are not connected to: that could hang the check."""
    from sqlalchemy.engine import make_url  # deferred: only a spec naming a storage needs it
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = make_url(url)
        dialect = u.get_dialect()
    except NoSuchModuleError:  # (an ArgumentError too)
        return f"SQLAlchemy knows no driver {u.drivername!r}; e.g. {u.get_backend_name()}://..."
    except (ArgumentError, ValueError):
        return f"{url!r} is no database URL (e.g. sqlite:////abs/path/optuna.db)"
    if not here:
        return None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        return f"the driver of {u.drivername} is not installed here (no module {e.name!r})"
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    db = Path(u.database).expanduser()  # relative: to the folder the sweep is run from
    folder = db.parent.resolve()
    if db.is_dir():
        return f"{db} is a folder, not a database file"
    if not folder.is_dir():
        return f"no folder {folder} for the SQLite database; create it or fix the URL"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write in {folder}, where the SQLite database would be"
    return None


def _middle(dist: dict[str, Any]) -> Any:
    """A value inside a knob's range, so that checking one knob's ends is not muddled by another's."""
    if dist["kind"] == "fixed":
        return dist["value"]
    if dist["kind"] == "categorical":
        return dist["taken"]
    lo, hi = dist["low"], dist["high"]
    mid = (lo * hi) ** 0.5 if dist.get("log") and lo > 0 else (lo + hi) / 2
    return round(mid) if dist["kind"] == "int" else mid


class _Parts:
    """The sound parts of a spec being validated (None where a part has problems)."""

    def __init__(self, data: Mapping[str, Any], problems: list[Problem]) -> None:
        self.sections = valid_sections(SweepSpec, data, problems)
        bad = {p.path.split(".")[0].split("[")[0] for p in problems}
        self.train = data.get("train") if isinstance(data.get("train"), dict) else None
        mp = data.get("method_params")
        self.method_params = (mp or {}) if "method_params" not in bad else None
        self.seed = data.get("seed", 0) if "seed" not in bad else 0
        self.check_data = data.get("check_data", True) if "check_data" not in bad else True

    def __getattr__(self, name: str) -> Any:
        return self.sections.get(name)


def _sound_space(space: Any, found: list[Problem]) -> tuple[Any, set[str]]:
    """The space with only its well-formed overrides, and the knobs whose overrides are not, so
    that the training configs are still checked (a typo in ``train`` is no less a typo beside a
    bad range); None when the problems leave no space to check (an override that breaks the
    space as a whole, or a bad one of a knob that chooses between branches)."""
    prefix = "space.overrides."
    if any(not p.path.startswith(prefix) for p in found):
        return None, set()
    unsound = {p.path.removeprefix(prefix).split(".")[0] for p in found}
    sound = {k: o for k, o in space.overrides.items() if str(k) not in unsound}
    try:
        narrowed = branches(space.name, sound)
        if override_problems(space.name, sound):
            return None, set()
    except Exception:
        return None, set()
    if len(narrowed) > 1 and any(
        b.get(k, {}).get("kind") == "categorical" for b in narrowed for k in unsound
    ):
        return None, set()  # which branches were meant is unknown
    return space.model_copy(update={"overrides": sound}), unsound


def _train_problems(parts: _Parts, space: Any, unsound: Collection[str] = ()) -> list[Problem]:
    """The ``train`` section on its own, then (with a space) the training config of every branch
    of the space with its knobs in mid-range and with each knob at both ends of its range (and
    at each choice), on the real data and model; problems name the spec field to fix. Knobs in
    ``unsound`` (overrides reported already) stay at their default mid-range, unblamed."""
    if parts.train is None:
        return []
    models: dict[str, Any] = {}
    _, sections, base = validate_train(parts.train, knobs=False)
    problems = [p.under("train") for p in base]
    # The method and its knobs come from the space: the base section is checked without them.
    sections.pop("compression", None)
    problems += [p.under("train") for p in model_problems(sections, parts.check_data, models)]
    if space is None or parts.method_params is None:
        return problems

    def check(knobs: dict[str, Any]) -> list[Problem]:
        try:
            data = trial_dict(parts.train, parts.method_params, space.name, parts.seed, knobs)
        except ValueError:  # a train section that is no mapping: reported above
            return []
        _, sections, found = validate_train(data)
        return found + model_problems(sections, parts.check_data, models)

    for knobs in branches(space.name, space.overrides):
        middle = {k: _middle(d) for k, d in knobs.items()}
        at_middle = check(middle)
        problems += [
            _attribute(space, parts, p, middle, None)
            for p in at_middle
            if _blamed(p, middle, None) not in unsound
        ]
        for knob, dist in knobs.items():
            if knob in unsound:
                continue
            for value in extreme_values(dist):
                other = dist["kind"] == "categorical" and value != dist["taken"]
                if other and set(record(space.name, space.overrides, {knob: value})) != set(knobs):
                    continue  # this choice leads to another branch, checked on its own
                for p in check({**middle, knob: value}):
                    varied = {**middle, knob: value}
                    if p not in at_middle and _blamed(p, varied, knob) not in unsound:
                        problems.append(_attribute(space, parts, p, varied, knob))
    return list(dict.fromkeys(problems))  # dedupe, keep order


def _blamed(p: Problem, knobs: dict[str, Any], varied: str | None) -> str | None:
    """The knob whose value provoked trial-config problem ``p``, if one did."""
    owner = None  # the knob whose own field the problem is at
    for k in knobs:
        path = KNOB_PATHS.get(k, f"compression.params.{k}")
        if p.path == path or p.path.startswith(path + "."):
            owner = k
    if varied is not None and (owner == varied or p.path == "compression.params"):
        return varied
    return owner


def _attribute(
    space: Any, parts: _Parts, p: Problem, knobs: dict[str, Any], varied: str | None
) -> Problem:
    """Name the spec field behind a trial-config problem: the knob whose value provoked it, the
    method's fixed knobs, or the base ``train`` section."""
    knob = _blamed(p, knobs, varied)
    if knob is not None:
        where = (
            f"space.overrides.{knob}"
            if knob in space.overrides
            else f"space {space.name!r} knob {knob!r}"
        )
        return Problem(f"{where} = {knobs[knob]!r}", str(p))
    method = knobs.get("method") or _given_method(parts)
    fixed = parts.method_params.get(method, {}) if parts.method_params else {}
    param = p.path.removeprefix("compression.params.")
    if p.path.startswith("compression.params.") and param in fixed:
        return Problem(f"method_params.{method}.{param}", p.message)
    if p.path.startswith("compression.params"):
        values = ", ".join(f"{k}={v!r}" for k, v in knobs.items() if k not in KNOB_PATHS)
        where = f"space.overrides ({values})"
        if fixed:  # the method's fixed knobs take part too
            where += f" with method_params.{method} ({', '.join(f'{k}={v!r}' for k, v in fixed.items())})"
        return Problem(where, str(p))
    return p.under("train")


def _given_method(parts: _Parts) -> str:
    compression = (parts.train or {}).get("compression")
    method = compression.get("method") if isinstance(compression, dict) else None
    return method if isinstance(method, str) and method else parts.space.name


# --------------------------------------------------------------------------------------------
# Rules between sections


def _rule_problems(parts: _Parts, space_ok: bool) -> list[Problem]:
    p: list[Problem] = []
    objective, search, scheduler = parts.objective, parts.search, parts.scheduler
    metrics = objective.metrics if objective else []
    if search and objective and search.sampler == "nsga2" and len(metrics) < 2:
        p.append(
            Problem(
                "search.sampler",
                "nsga2 is multi-objective; give two or more objective.metrics, or use tpe",
            )
        )
    if scheduler and objective and scheduler.name == "asha":
        if len(metrics) > 1:
            p.append(
                Problem(
                    "scheduler.name",
                    "asha stops trials on one metric; use none with several objective.metrics",
                )
            )
        elif get_metric(metrics[0]).when != "evaluation":
            p.append(
                Problem(
                    "scheduler.name",
                    f"asha compares trials at each evaluation, and {metrics[0]} is known only at "
                    "the end; use none, or an evaluation metric such as val_accuracy",
                )
            )
    if objective and parts.train is not None:
        data = parts.train.get("data")
        fraction = data.get("val_fraction", 0.1) if isinstance(data, dict) else 0.1
        held_out = [m for m in metrics if get_metric(m).split == "val"]
        if held_out and fraction == 0:
            p.append(
                Problem(
                    "train.data.val_fraction",
                    f"is 0, but objective.metrics {', '.join(held_out)} are measured on the "
                    "validation split; hold out a fraction (e.g. 0.1) or choose other metrics",
                )
            )
    if space_ok and parts.method_params:
        methods = {
            b["method"]["taken"]
            for b in branches(parts.space.name, parts.space.overrides)
            if "method" in b
        }
        methods = methods or {_given_method(parts)}
        for unused in sorted(set(parts.method_params) - methods):
            p.append(
                Problem(
                    f"method_params.{unused}",
                    f"space {parts.space.name!r} never trains {unused} (it trains "
                    f"{', '.join(sorted(methods))})",
                )
            )
    if search:
        p += eopt_problems(search, metrics, parts.space if space_ok else None)
    if search and search.sampler != "grid" and search.replicates != 1:
        p.append(
            Problem(
                "search.replicates",
                f"replicates run each cell of a grid several times; {search.sampler!r} draws "
                "its own trials: use sampler: grid, or leave replicates out",
            )
        )
    if space_ok and search and search.sampler == "grid":
        grid, found = grid_space(parts.space.name, parts.space.overrides)
        p += found
        budget = parts.budget
        size = math.prod(map(len, grid.values()))
        runs = size * search.replicates
        each = "once" if search.replicates == 1 else f"{search.replicates} times (replicates)"
        if not found and budget and budget.num_trials not in (None, runs):
            p.append(
                Problem(
                    "budget.num_trials",
                    f"a grid runs each of its {size} cells {each}; leave num_trials out or set "
                    f"it to {runs} (got {budget.num_trials})",
                )
            )
    return p


def _environment_problems(
    parts: _Parts, check_tracking: bool, check_storage: bool
) -> list[Problem]:
    """What this machine must provide: a storage folder it can write, a study database (its
    driver, an SQLite database's folder) and a tracking store it can use."""
    p = []
    if check_storage and parts.storage is not None:
        problem = storage_problem(parts.storage.path)
        if problem:
            p.append(Problem("storage.path", problem))
    if parts.search is not None and parts.search.storage is not None:
        problem = study_storage_problem(parts.search.storage, here=check_storage)
        if problem:
            p.append(Problem("search.storage", problem))
    if check_tracking and parts.tracking is not None and parts.tracking.uri:
        problem = check_tracking_uri(parts.tracking.uri)
        if problem:
            p.append(Problem("", problem))  # worded with its field already
    return p


# --------------------------------------------------------------------------------------------
# Entry points


def _retired(data: dict[str, Any]) -> list[Problem]:
    """Fields earlier versions took, taken out of ``data`` with a problem that says what now."""
    objective = data.get("objective")
    if isinstance(objective, dict) and "modes" in objective:
        data["objective"] = {k: v for k, v in objective.items() if k != "modes"}
        metrics = objective.get("metrics") or [DEFAULT_OBJECTIVE]
        known = [m for m in metrics if isinstance(m, str) and m in METRICS]
        directions = ", ".join(f"{m}: {METRICS[m].direction}" for m in known)
        return [
            Problem(
                "objective.modes",
                "remove it: directions come from the metric catalogue"
                + (f" ({directions})" if directions else ""),
            )
        ]
    return []


def spec_problems(
    data: Any, *, check_tracking: bool = True, check_storage: bool = True
) -> tuple[SweepSpec | None, list[Problem]]:
    """Every problem of spec mapping ``data``, and the spec when there is none."""
    if not isinstance(data, dict):
        return None, validate(SweepSpec, data)[1]
    data = dict(data)
    problems = _retired(data)
    problems += validate(SweepSpec, data)[1]
    parts = _Parts(data, problems)
    space_ok = parts.space is not None
    space, unsound = parts.space, set()
    if space_ok:
        found = override_problems(parts.space.name, parts.space.overrides)
        problems += found
        space_ok = not found
        if found:
            space, unsound = _sound_space(parts.space, found)
    problems += _train_problems(parts, space, unsound)
    problems += _rule_problems(parts, space_ok)
    problems += _environment_problems(parts, check_tracking, check_storage)
    problems = list(dict.fromkeys(problems))
    if problems:
        return None, problems
    return SweepSpec.model_validate(data), []


def parse_spec(
    data: Any,
    source: str = "sweep spec",
    check_tracking: bool = True,
    *,
    check_storage: bool | None = None,
) -> SweepSpec:
    """Validate a sweep spec mapping in full; raise :class:`SpecError` listing every problem.

    ``check_tracking``: the tracking store must be reachable from here; ``check_storage``
    (default: as ``check_tracking``): the storage path must be writable from here. Both are off
    when the sweep runs elsewhere (``compsweep submit``).
    """
    check_storage = check_tracking if check_storage is None else check_storage
    spec, problems = spec_problems(data, check_tracking=check_tracking, check_storage=check_storage)
    if problems or spec is None:
        raise SpecError(problems, source)
    return spec


def load_spec(
    path: str | Path, check_tracking: bool = True, *, check_storage: bool | None = None
) -> SweepSpec:
    data = read_mapping(path, "sweep spec", SweepSpec.model_fields, SpecError)
    return parse_spec(data, str(path), check_tracking, check_storage=check_storage)
