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

The spec's model is here; :mod:`sweeps.spec_checks` validates a spec in full (every
section, the training config of every branch of the space, the rules between sections, what
this machine must provide).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from search_spaces import SPACES, grid_space
from sweeps.searchers import SAMPLERS, SCHEDULERS
from sweeps.tracking_uri import tracking_uri_problem
from trainers.config import ConfigError, MethodName, TrainConfig, parse_train_config, set_dotted
from trainers.metrics import (
    DEFAULT_OBJECTIVE,
    METRICS,
    check_selectable,
    get_metric,
    selectable_metrics,
)
from trainers.validation import (
    Int,
    NonNegativeInt,
    PositiveInt,
    Section,
    Seed,
    did_you_mean,
    literal_of,
    section,
    shown,
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
# A letter or digit first: a sweep id starting with '-' would be taken for an option by
# `status`, `stop` and `resume`.
NAME_PATTERN = r"^[^\W_][\w.-]*$"

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
                f"give the sweep a name of letters, digits, '-', '_' or '.' that starts with a "
                f"letter or digit, got {shown(v)}"
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


# --------------------------------------------------------------------------------------------
# Trial configs


def trial_dict(
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
    return trial_dict(spec.train, spec.method_params, spec.space.name, spec.seed, knobs)


def trial_config(spec: SweepSpec, knobs: dict[str, Any]) -> TrainConfig:
    return parse_train_config(trial_train_dict(spec, knobs), "trial config")


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
    "tracking_uri_problem",
    "trial_config",
    "trial_dict",
    "trial_train_dict",
]
