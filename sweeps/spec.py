"""Sweep spec: what to train, what to search, how to run it, where to track it.

Validated in full before anything is sent to the cluster; a :class:`SpecError` lists every
problem at once, one line each, naming its field. The YAML layout::

    name: digits-prune                 # experiment name in MLflow, folder name in storage
    train: {data: ..., model: ..., optim: ..., compression: ..., run: ...}   # base config
    method_params: {prune: {schedule: gradual}}   # fixed knobs per method (mixed sweeps)
    space: {name: prune, overrides: {pnr: {low: 1, high: 500}, rate: 0.9}}
    budget: {num_trials: 12, max_concurrent: 2, time_budget_s: null}
    objective: {metrics: [val_accuracy, compression_ratio]}   # directions: the metric catalogue
    search: {sampler: tpe}             # tpe | nsga2 | random | grid (replicates: seeds per cell) | eopt
    scheduler: {name: none}            # none | asha (grace_period, reduction_factor)
    resources: {cpus: 1, gpus: 0}      # per trial; fractional GPUs pack trials onto one GPU
    failure: {max_failures: 2}
    storage: {path: compsweep_results}
    tracking: {uri: null}              # null: embedded SQLite store ./mlflow.db
    seed: 0

Checks, in order, each run on every part the previous ones found sound: the sections' models
(types, bounds, names), the space overrides, the base ``train`` section and then the training
config of every branch of the space with each knob at both ends of its range (and at each
choice) on the real data and model (:func:`_train_problems`), the rules between sections, and
last what this machine must provide (a writable storage path, a reachable tracking store).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from search_spaces import SPACES, branches, extreme_values, grid_space, override_problems, record
from sweeps.searchers import SAMPLERS, SCHEDULERS, eopt_problems
from trainers.config import (
    ConfigError,
    MethodName,
    TrainConfig,
    parse_train_config,
    read_mapping,
    set_dotted,
    validate_train,
)
from trainers.metrics import (
    DEFAULT_OBJECTIVE,
    METRICS,
    check_selectable,
    get_metric,
    selectable_metrics,
)
from trainers.model_checks import model_problems
from trainers.validation import (
    Int,
    NonNegativeInt,
    PositiveInt,
    Problem,
    Section,
    Seed,
    did_you_mean,
    join,
    literal_of,
    section,
    shown,
    valid_sections,
    validate,
)

# Knobs that live outside compression.params; every other knob is a distortion knob.
KNOB_PATHS = {
    "method": "compression.method",
    "pnr": "compression.pnr",
    "lr": "optim.lr",
    "momentum": "optim.momentum",
    "weight_decay": "optim.weight_decay",
    "batch_size": "data.batch_size",
    "epochs": "run.epochs",
    "seed": "run.seed",  # a grid's replicate axis (search.replicates)
}
DEFAULT_NUM_TRIALS = 8
# Tracking stores MLflow 3 opens (SQLAlchemy ones also as scheme+driver); a plain path or
# file: is its retired file store, refused unless MLFLOW_ALLOW_FILE_STORE is set.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
NAME_PATTERN = r"^[\w.-]+$"

SpaceName = literal_of(SPACES, "search space")
SamplerName = literal_of(SAMPLERS, "sampler")
SchedulerName = literal_of(SCHEDULERS, "scheduler")


class SpecError(ConfigError):
    """A sweep spec with problems; ``problems`` lists them all."""


def _selectable(name: str) -> str:
    if name not in METRICS:
        raise ValueError(
            f"unknown metric {name!r}{did_you_mean(name, METRICS)}; rank by one of: "
            f"{', '.join(selectable_metrics())}"
        )
    problem = check_selectable(name)
    if problem:
        raise ValueError(problem)
    return name


ObjectiveMetric = Annotated[str, AfterValidator(_selectable)]


class SpaceSpec(Section):
    name: SpaceName = Field(description="a registered search space (see search_spaces)")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="per knob: {low, high, log, step}, {choices: [...]}, or one fixed value",
    )


class BudgetSpec(Section):
    num_trials: PositiveInt | None = Field(
        None, description=f"trials to run (default {DEFAULT_NUM_TRIALS}; a grid: its size)"
    )
    max_concurrent: PositiveInt = Field(2, description="trials running at once")
    time_budget_s: float | None = Field(
        None, gt=0, description="stop starting trials after this many seconds"
    )


class ObjectiveSpec(Section):
    metrics: list[ObjectiveMetric] = Field(
        default_factory=lambda: [DEFAULT_OBJECTIVE],
        min_length=1,
        description="metrics to optimize (two or more: a Pareto front); directions come from "
        "the metric catalogue",
    )

    @field_validator("metrics")
    @classmethod
    def _distinct(cls, metrics: list[str]) -> list[str]:
        repeated = sorted({m for m in metrics if metrics.count(m) > 1})
        if repeated:
            raise ValueError(f"each metric once; repeated: {', '.join(repeated)}")
        return metrics

    def modes(self) -> list[str]:
        """``"max"``/``"min"`` per metric, from the metric catalogue."""
        return [str(get_metric(m).direction) for m in self.metrics]


class GivenEopt(Section):
    """A known e_opt for ``sampler: eopt`` (``compsweep run --eopt-from`` fills it in)."""

    value: float = Field(gt=0, description="e_opt, the weight change per step e_w/pNR")
    low: float = Field(gt=0, description="the lower end of its range")
    high: float = Field(gt=0, description="the upper end of its range")
    source: str = Field("", description="where it was measured (a sweep id)")

    @model_validator(mode="after")
    def _ordered(self) -> GivenEopt:
        if not self.low <= self.value <= self.high:
            raise ValueError(
                f"needs low <= value <= high, got {self.low}, {self.value}, {self.high}"
            )
        return self


class SearchSpec(Section):
    sampler: SamplerName = Field("tpe", description="the Optuna sampler")
    e_opt: GivenEopt | None = Field(
        None, description="eopt only: a known e_opt, so the sampler skips its pilot"
    )
    storage: Annotated[str, Field(min_length=1)] | None = Field(
        None,
        description="Optuna storage URL of the sweep's study (e.g. postgresql://...); null: "
        "$COMPSWEEP_STUDY_STORAGE, else optuna.db in the sweep folder",
    )
    replicates: Annotated[Int, Field(ge=1, le=100)] = Field(
        1,
        description="grid only: runs of each cell, with seeds seed, seed+1, …; analyze "
        "averages a cell's runs into one point",
    )

    @field_validator("storage")
    @classmethod
    def _an_rdb_url(cls, url: str | None) -> str | None:
        scheme = urlsplit(url).scheme.split("+", 1)[0].lower() if url else ""
        if url is not None and scheme not in ("sqlite", "postgresql", "mysql", "oracle", "mssql"):
            raise ValueError(
                f"{url!r} is no database URL Optuna can store a study in; use "
                "postgresql://USER@HOST/DB, mysql://..., sqlite:////abs/path/optuna.db, or null"
            )
        return url


class SchedulerSpec(Section):
    name: SchedulerName = Field("none", description="early stopping of trials")
    grace_period: PositiveInt = Field(1, description="evaluations before ASHA may stop a trial")
    reduction_factor: Annotated[Int, Field(ge=2)] = Field(3, description="ASHA's halving rate")


class ResourcesSpec(Section):
    cpus: float = Field(1.0, ge=0, description="CPUs per trial")
    gpus: float = Field(0.0, ge=0, description="GPUs per trial; a fraction packs trials per GPU")

    @model_validator(mode="after")
    def _something(self) -> ResourcesSpec:
        if self.cpus == 0 and self.gpus == 0:
            raise ValueError("give each trial some cpus or gpus (both are 0)")
        if self.gpus > 1 and not self.gpus.is_integer():
            raise ValueError(
                f"gpus: a fraction must be < 1 (trials share one GPU), got {self.gpus}"
            )
        return self


class FailureSpec(Section):
    max_failures: NonNegativeInt = Field(
        2, description="retries of a failed trial, from its last checkpoint"
    )


class StorageSpec(Section):
    path: Annotated[str, Field(min_length=1)] = Field(
        "compsweep_results", description="folder of the sweeps' state (shared on a cluster)"
    )


class TrackingSpec(Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else the embedded SQLite "
        "store ./mlflow.db",
    )
    experiment: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="MLflow experiment (default: the sweep's name)"
    )

    @field_validator("uri")
    @classmethod
    def _usable_by_mlflow(cls, uri: str | None) -> str | None:
        problem = None if uri is None else tracking_uri_problem(uri)
        if problem:
            raise ValueError(problem)
        return uri


class SweepSpec(Section):
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)] = Field(
        description="the sweep's name: MLflow experiment and folder name"
    )
    train: dict[str, Any] = Field(
        description="the base training config of every trial, as for `compsweep train`"
    )
    method_params: dict[MethodName, dict[str, Any]] = Field(
        default_factory=dict, description="fixed knobs per method (for spaces that search it)"
    )
    space: section(SpaceSpec) = Field(description="what to search")
    budget: section(BudgetSpec) = Field(default_factory=BudgetSpec)
    objective: section(ObjectiveSpec) = Field(default_factory=ObjectiveSpec)
    search: section(SearchSpec) = Field(default_factory=SearchSpec)
    scheduler: section(SchedulerSpec) = Field(default_factory=SchedulerSpec)
    resources: section(ResourcesSpec) = Field(default_factory=ResourcesSpec)
    failure: section(FailureSpec) = Field(default_factory=FailureSpec)
    storage: section(StorageSpec) = Field(default_factory=StorageSpec)
    tracking: section(TrackingSpec) = Field(default_factory=TrackingSpec)
    seed: Seed = Field(0, description="seed of the sampler (trials default to it too)")
    check_data: bool = Field(
        True, description="look for the dataset before starting (off when only workers have it)"
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if isinstance(v, str) and re.match(NAME_PATTERN, v) is None:
            raise ValueError(
                f"give the sweep a name of letters, digits, '-', '_' or '.', got {shown(v)}"
            )
        return v

    @model_validator(mode="after")
    def _default_num_trials(self) -> SweepSpec:
        if self.budget.num_trials is None:
            self.budget.num_trials = DEFAULT_NUM_TRIALS
            if self.search.sampler == "grid":
                try:
                    grid, problems = grid_space(self.space.name, self.space.overrides)
                except Exception:  # overrides the space refuses: reported by spec_problems
                    grid, problems = {}, [None]
                self.budget.num_trials = (
                    math.prod(map(len, grid.values())) * self.search.replicates
                    if not problems
                    else None
                )
        return self

    def replicate_seeds(self) -> list[int] | None:
        """The seeds a grid runs each cell with (``search.replicates`` of them, counting up from
        the trials' seed), or None for one run per cell."""
        if self.search.sampler != "grid" or self.search.replicates == 1:
            return None
        run = self.train.get("run")
        first = run.get("seed") if isinstance(run, dict) else None
        first = self.seed if first is None else int(first)
        return [first + r for r in range(self.search.replicates)]


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow could not use ``uri`` as its tracking store (from its form alone), or None.
    Credentials in it are fine."""
    if not uri.strip():
        return "empty; leave it out (null) for the embedded SQLite store ./mlflow.db"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError as e:
        return f"{shown(uri)} is not a URI ({e})"
    scheme = parts.scheme.lower().split("+")[0]
    if scheme in ("", "file") or len(scheme) == 1:  # a path (C:\ too)
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return None
        return (
            f"{shown(uri)} is a file path; MLflow 3 no longer tracks to files: use "
            "sqlite:///PATH/mlflow.db, an http(s)://HOST:PORT server, or leave it out"
        )
    if scheme not in TRACKING_SCHEMES:
        return (
            f"scheme {parts.scheme!r} is not one MLflow can track to; use one of "
            f"{', '.join(TRACKING_SCHEMES)} (e.g. http://HOST:5000 or sqlite:///mlflow.db)"
        )
    if scheme in ("http", "https") and not parts.hostname:
        return f"{shown(uri)} names no host; write {scheme}://HOST:PORT"
    if (
        scheme == "sqlite"
        and not uri.lower().startswith("sqlite:///")
        and uri.lower() != "sqlite://"
    ):
        return f"{shown(uri)}: write sqlite:///relative/path.db or sqlite:////absolute/path.db"
    return None


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


# --------------------------------------------------------------------------------------------
# Trial configs


def _trial_dict(
    train: Mapping[str, Any],
    method_params: Mapping[str, Any],
    space: str,
    seed: int,
    knobs: Mapping[str, Any],
) -> dict[str, Any]:
    data = copy.deepcopy(dict(train))
    compression = data.get("compression")
    given = compression.get("method") if isinstance(compression, dict) else None
    method = knobs.get("method") or (given if isinstance(given, str) else None) or space
    set_dotted(data, "compression.method", method)
    params = data["compression"].get("params")
    if params is None:
        params = data["compression"]["params"] = {}
    if not isinstance(params, dict):
        raise ValueError("compression.params is not a mapping")
    params.update(copy.deepcopy(method_params.get(method, {})))
    for knob, value in knobs.items():
        set_dotted(data, KNOB_PATHS.get(knob, f"compression.params.{knob}"), value)
    run = data.get("run")
    if run is None:
        run = data["run"] = {}
    if isinstance(run, dict):
        run.setdefault("seed", seed)
    return data


def trial_train_dict(spec: SweepSpec, knobs: dict[str, Any]) -> dict[str, Any]:
    """The training config (as a mapping) of one trial: the base ``train`` section, the fixed
    knobs of its method, then the searched knobs."""
    return _trial_dict(spec.train, spec.method_params, spec.space.name, spec.seed, knobs)


def trial_config(spec: SweepSpec, knobs: dict[str, Any]) -> TrainConfig:
    return parse_train_config(trial_train_dict(spec, knobs), "trial config")


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


def _train_problems(parts: _Parts, space_ok: bool) -> list[Problem]:
    """The ``train`` section on its own, then (with a sound space) the training config of every
    branch of the space with its knobs in mid-range and with each knob at both ends of its range
    (and at each choice), on the real data and model; problems name the spec field to fix."""
    if parts.train is None:
        return []
    models: dict[str, Any] = {}
    _, sections, base = validate_train(parts.train, knobs=False)
    problems = [p.under("train") for p in base]
    # The method and its knobs come from the space: the base section is checked without them.
    sections.pop("compression", None)
    problems += [p.under("train") for p in model_problems(sections, parts.check_data, models)]
    if not space_ok or parts.method_params is None:
        return problems
    space = parts.space

    def check(knobs: dict[str, Any]) -> list[Problem]:
        try:
            data = _trial_dict(parts.train, parts.method_params, space.name, parts.seed, knobs)
        except ValueError:  # a train section that is no mapping: reported above
            return []
        _, sections, found = validate_train(data)
        return found + model_problems(sections, parts.check_data, models)

    for knobs in branches(space.name, space.overrides):
        middle = {k: _middle(d) for k, d in knobs.items()}
        at_middle = check(middle)
        problems += [_attribute(parts, p, middle, None) for p in at_middle]
        for knob, dist in knobs.items():
            for value in extreme_values(dist):
                other = dist["kind"] == "categorical" and value != dist["taken"]
                if other and set(record(space.name, space.overrides, {knob: value})) != set(knobs):
                    continue  # this choice leads to another branch, checked on its own
                for p in check({**middle, knob: value}):
                    if p not in at_middle:
                        problems.append(_attribute(parts, p, {**middle, knob: value}, knob))
    return list(dict.fromkeys(problems))  # dedupe, keep order


def _attribute(parts: _Parts, p: Problem, knobs: dict[str, Any], varied: str | None) -> Problem:
    """Name the spec field behind a trial-config problem: the knob whose value provoked it, the
    method's fixed knobs, or the base ``train`` section."""
    space = parts.space
    owner = None  # the knob whose own field the problem is at
    for k in knobs:
        path = KNOB_PATHS.get(k, f"compression.params.{k}")
        if p.path == path or p.path.startswith(path + "."):
            owner = k
    knob = (
        varied
        if varied is not None and (owner == varied or p.path == "compression.params")
        else owner
    )
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
    """What this machine must provide: a storage folder it can write, a tracking store it can use."""
    p = []
    if check_storage and parts.storage is not None:
        problem = storage_problem(parts.storage.path)
        if problem:
            p.append(Problem("storage.path", problem))
    if check_tracking and parts.tracking is not None and parts.tracking.uri:
        from sweeps.tracking import check_tracking_uri

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
    if space_ok:
        found = override_problems(parts.space.name, parts.space.overrides)
        problems += found
        space_ok = not found
    problems += _train_problems(parts, space_ok)
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


def from_dict_spec(data: dict[str, Any]) -> SweepSpec:
    """Rebuild an already validated spec (e.g. inside a trial) without re-checking data or model."""
    spec, problems = validate(SweepSpec, data)
    if problems or spec is None:
        raise SpecError(problems)
    return spec


__all__ = [
    "KNOB_PATHS",
    "SpecError",
    "SweepSpec",
    "from_dict_spec",
    "join",
    "load_spec",
    "parse_spec",
    "spec_problems",
    "trial_config",
    "trial_train_dict",
]
