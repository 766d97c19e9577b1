"""Sweep spec: what to train, what to search, how to run it, where to track it.

Validated in full before anything is sent to the cluster; a :class:`SpecError` lists every
problem at once, each naming its field. The YAML layout::

    name: digits-prune                 # experiment name in MLflow, folder name in storage
    train: {data: ..., model: ..., optim: ..., compression: ..., run: ...}   # base config
    method_params: {prune: {schedule: gradual}}   # fixed knobs per method (mixed sweeps)
    space: {name: prune, overrides: {pnr: {low: 1, high: 500}, rate: 0.9}}
    budget: {num_trials: 12, max_concurrent: 2, time_budget_s: null}
    objective: {metrics: [val_accuracy, compression_ratio]}   # modes: each metric's direction
    search: {sampler: tpe}             # tpe | nsga2 | random
    scheduler: {name: none}            # none | asha (grace_period, reduction_factor)
    resources: {cpus: 1, gpus: 0}      # per trial; fractional GPUs pack trials onto one GPU
    failure: {max_failures: 2}
    storage: {path: compsweep_results}
    tracking: {uri: null}              # null: embedded SQLite store ./mlflow.db
    seed: 0
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search_spaces import branches, check_overrides, extreme_values, record
from trainers.config import ConfigError, TrainConfig, from_dict, parse_train_config, set_dotted
from trainers.metrics import DEFAULT_OBJECTIVE, check_selectable, get_metric, selectable_metrics

# Knobs that live outside compression.params; every other knob is a distortion knob.
KNOB_PATHS = {
    "method": "compression.method",
    "pnr": "compression.pnr",
    "lr": "optim.lr",
    "momentum": "optim.momentum",
    "weight_decay": "optim.weight_decay",
    "batch_size": "data.batch_size",
    "epochs": "run.epochs",
}
# What may be an objective: the catalogue's selectable metrics (a direction, not test data).
OBJECTIVE_METRICS = tuple(selectable_metrics())


class SpecError(ConfigError):
    """A sweep spec with problems; ``problems`` lists them all."""


@dataclass
class SpaceSpec:
    name: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class BudgetSpec:
    num_trials: int = 8
    max_concurrent: int = 2
    time_budget_s: float | None = None


@dataclass
class ObjectiveSpec:
    metrics: list[str] = field(default_factory=lambda: [DEFAULT_OBJECTIVE])
    modes: list[str] = field(default_factory=list)  # default: each metric's direction

    def resolved_modes(self) -> list[str]:
        return self.modes or [
            (get_metric(m).direction if m in OBJECTIVE_METRICS else None) or "max"
            for m in self.metrics
        ]


@dataclass
class SearchSpec:
    sampler: str = "tpe"  # tpe | nsga2 | random


@dataclass
class SchedulerSpec:
    name: str = "none"  # none | asha
    grace_period: int = 1  # evaluations before ASHA may stop a trial
    reduction_factor: int = 3


@dataclass
class ResourcesSpec:
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class FailureSpec:
    max_failures: int = 2


@dataclass
class StorageSpec:
    path: str = "compsweep_results"


@dataclass
class TrackingSpec:
    uri: str | None = None  # None: embedded SQLite store in the working directory
    experiment: str | None = None  # default: the sweep name


@dataclass
class SweepSpec:
    name: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    space: SpaceSpec = field(default_factory=SpaceSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    failure: FailureSpec = field(default_factory=FailureSpec)
    storage: StorageSpec = field(default_factory=StorageSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    seed: int = 0
    check_data: bool = True  # look for the dataset before starting (off when only workers have it)

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


def trial_train_dict(spec: SweepSpec, knobs: dict[str, Any]) -> dict[str, Any]:
    """The training config (as a mapping) of one trial: the base ``train`` section, the fixed
    knobs of its method, then the searched knobs."""
    data = copy.deepcopy(spec.train)
    method = knobs.get("method") or data.get("compression", {}).get("method") or spec.space.name
    set_dotted(data, "compression.method", method)
    params = data.setdefault("compression", {}).setdefault("params", {})
    params.update(copy.deepcopy(spec.method_params.get(method, {})))
    for knob, value in knobs.items():
        set_dotted(data, KNOB_PATHS.get(knob, f"compression.params.{knob}"), value)
    run = data.setdefault("run", {})
    run.setdefault("seed", spec.seed)
    return data


def trial_config(spec: SweepSpec, knobs: dict[str, Any]) -> TrainConfig:
    return parse_train_config(trial_train_dict(spec, knobs), "trial config")


def _check_structure(spec: SweepSpec) -> list[str]:
    p: list[str] = []
    if not spec.name or not spec.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        p.append(
            f"name: give the sweep a name of letters, digits, '-', '_' or '.', got {spec.name!r}"
        )
    if not spec.space.name:
        p.append("space.name: name a search space (e.g. prune, tucker2, mixed)")
    b = spec.budget
    if b.num_trials < 1:
        p.append(f"budget.num_trials: must be >= 1, got {b.num_trials}")
    if b.max_concurrent < 1:
        p.append(f"budget.max_concurrent: must be >= 1, got {b.max_concurrent}")
    if b.time_budget_s is not None and b.time_budget_s <= 0:
        p.append(f"budget.time_budget_s: must be > 0 seconds or null, got {b.time_budget_s}")
    o = spec.objective
    for m in o.metrics:
        problem = check_selectable(m)
        if problem:
            p.append(f"objective.metrics: {problem}")
    val_fraction = (spec.train.get("data") or {}).get("val_fraction")
    val_metrics = [m for m in o.metrics if m in OBJECTIVE_METRICS and get_metric(m).split == "val"]
    if val_fraction == 0 and val_metrics:
        p.append(
            f"objective.metrics: {', '.join(val_metrics)} need a validation split, but "
            "train.data.val_fraction is 0; give it a fraction (e.g. 0.1)"
        )
    if not o.metrics:
        p.append(f"objective.metrics: name at least one metric (e.g. [{DEFAULT_OBJECTIVE}])")
    if o.modes and len(o.modes) != len(o.metrics):
        p.append(
            f"objective.modes: give one mode per metric ({len(o.metrics)}), got {len(o.modes)}"
        )
    for m in o.modes:
        if m not in ("max", "min"):
            p.append(f"objective.modes: each mode is 'max' or 'min', got {m!r}")
    if spec.search.sampler not in ("tpe", "nsga2", "random"):
        p.append(f"search.sampler: must be tpe, nsga2 or random, got {spec.search.sampler!r}")
    if spec.search.sampler == "nsga2" and len(o.metrics) < 2:
        p.append(
            "search.sampler: nsga2 is multi-objective; give two or more objective.metrics, or use tpe"
        )
    s = spec.scheduler
    if s.name not in ("none", "asha"):
        p.append(f"scheduler.name: must be none or asha, got {s.name!r}")
    if s.name == "asha" and len(o.metrics) > 1:
        p.append(
            "scheduler.name: asha stops trials on one metric; use none with several objective.metrics"
        )
    if s.grace_period < 1 or s.reduction_factor < 2:
        p.append("scheduler: grace_period must be >= 1 and reduction_factor >= 2")
    r = spec.resources
    if r.cpus < 0 or r.gpus < 0 or (r.cpus == 0 and r.gpus == 0):
        p.append(
            f"resources: cpus and gpus must be >= 0 and not both 0, got cpus={r.cpus} gpus={r.gpus}"
        )
    if r.gpus > 1 and r.gpus != int(r.gpus):
        p.append(f"resources.gpus: a fraction must be < 1 (trials share one GPU), got {r.gpus}")
    if spec.failure.max_failures < 0:
        p.append(
            f"failure.max_failures: must be >= 0 (-1 is not supported), got {spec.failure.max_failures}"
        )
    for method, params in spec.method_params.items():
        if not isinstance(params, dict):
            p.append(f"method_params.{method}: expected a mapping of knobs")
    return p


def _check_trials(spec: SweepSpec) -> list[str]:
    """Build the training config of every branch of the space with its knobs in mid-range, then
    with each knob at both ends of its range (and at each choice), and report what would stop a
    trial, naming the knob (and value) responsible where one is."""
    problems: list[str] = []
    try:
        all_branches = branches(spec.space.name, spec.space.overrides)
    except Exception as e:  # a malformed override surfaces here
        return [f"space.overrides: {e}"]
    models: dict[str, Any] = {}

    def check(knobs: dict[str, Any]) -> list[str]:
        try:
            cfg = trial_config(spec, knobs)
        except ConfigError as e:
            return e.problems
        return _check_on_model(cfg, models, spec)

    for knobs in all_branches:
        middle = {k: _middle(d) for k, d in knobs.items()}
        base = check(middle)
        for msg in base:
            problems.append(_attribute(spec, msg, middle, None))
        for knob, dist in knobs.items():
            for value in extreme_values(dist):
                other = dist["kind"] == "categorical" and value != dist["taken"]
                if other and set(
                    record(spec.space.name, spec.space.overrides, {knob: value})
                ) != set(knobs):
                    continue  # this choice leads to another branch, checked on its own
                for msg in check({**middle, knob: value}):
                    if msg not in base:
                        problems.append(_attribute(spec, msg, {**middle, knob: value}, knob))
    return list(dict.fromkeys(problems))  # dedupe, keep order


def _attribute(spec: SweepSpec, msg: str, knobs: dict[str, Any], varied: str | None) -> str:
    """Name the spec field behind a trial-config problem: the knob varied to provoke it, the
    space's knob values (for distortion knobs), or the base ``train`` section."""
    if varied is None:  # a problem at mid-range: blame a knob whose own field it names, if any
        varied = next((k for k in knobs if k in KNOB_PATHS and msg.startswith(KNOB_PATHS[k])), None)
    if varied is not None and msg.startswith(KNOB_PATHS.get(varied, "compression.params")):
        field_ = (
            f"space.overrides.{varied}"
            if varied in spec.space.overrides
            else f"space {spec.space.name!r} knob {varied!r}"
        )
        return f"{field_} = {knobs[varied]!r}: {msg}"
    if msg.startswith("compression.params"):
        values = ", ".join(f"{k}={v!r}" for k, v in knobs.items() if k not in KNOB_PATHS)
        return f"space.overrides ({values}): {msg}"
    return msg if msg.startswith("train.") else f"train.{msg}"


def _middle(dist: dict[str, Any]) -> Any:
    """A value inside a knob's range, so that checking one knob's ends is not muddled by another's."""
    if dist["kind"] == "fixed":
        return dist["value"]
    if dist["kind"] == "categorical":
        return dist["taken"]
    lo, hi = dist["low"], dist["high"]
    mid = (lo * hi) ** 0.5 if dist.get("log") and lo > 0 else (lo + hi) / 2
    return round(mid) if dist["kind"] == "int" else mid


def _check_on_model(cfg: TrainConfig, cache: dict[str, Any], spec: SweepSpec) -> list[str]:
    """Problems only the model's weights reveal (rank above a layer's size, tile not dividing)."""
    from trainers.data import load_dataset
    from trainers.distortions import make_distortion
    from trainers.models import build_model
    from trainers.targets import compression_targets

    key = repr((cfg.data, cfg.model))
    if key not in cache:
        d = cfg.data
        try:
            if not spec.check_data and d.name not in ("digits", "synthetic", "synthetic_text"):
                raise LookupError
            # One sample is enough to learn shapes; this also proves the data is where it is said.
            info = load_dataset(
                d.name,
                batch_size=1,
                test_batch_size=1,
                root=d.root,
                download=d.download,
                limit_train=1,
                limit_test=1,
                val_fraction=0,  # no hold-out from a single sample
                **d.options,
            ).info
            cache[key] = build_model(cfg.model.name, info, **cfg.model.options)
        except LookupError:
            cache[key] = None
        except FileNotFoundError as e:
            cache[key] = f"train.data.root: {e}"
        except ValueError as e:
            cache[key] = f"train.model: {e}"
    model = cache[key]
    if model is None:
        return []
    if isinstance(model, str):
        return [model]
    if cfg.compression.method == "none":
        return []
    distortion = make_distortion(cfg.compression.method, **cfg.compression.params)
    return compression_targets(model, cfg.compression.targets, distortion)[1]


def parse_spec(data: Any, source: str = "sweep spec", check_tracking: bool = True) -> SweepSpec:
    """Validate a sweep spec mapping in full; raise :class:`SpecError` listing every problem."""
    problems: list[str] = []
    spec = from_dict(SweepSpec, data, "", problems)
    if not isinstance(data, dict):
        raise SpecError(problems, source)
    if "name" not in data:
        problems.append("name: missing; every sweep needs a name")
    # Unknown fields do not stop the checks below (the rest is still meaningful); a field of the
    # wrong type does, as its default would be checked in its place.
    if not any(": expected " in p for p in problems):
        problems += _check_structure(spec)
        problems += check_overrides(spec.space.name, spec.space.overrides)
        if not any(p.startswith("space.") for p in problems):
            problems += _check_trials(spec)
    if check_tracking and spec.tracking.uri:
        from sweeps.tracking import check_tracking_uri

        msg = check_tracking_uri(spec.tracking.uri)
        if msg:
            problems.append(msg)
    if problems:
        raise SpecError(problems, source)
    return spec


def load_spec(path: str | Path, check_tracking: bool = True) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"no such file: {path}"], str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError([f"not valid YAML: {e}"], str(path)) from None
    return parse_spec(data, str(path), check_tracking)


def from_dict_spec(data: dict[str, Any]) -> SweepSpec:
    """Rebuild an already validated spec (e.g. inside a trial) without re-checking data or model."""
    problems: list[str] = []
    spec = from_dict(SweepSpec, data, "", problems)
    if problems:
        raise SpecError(problems)
    return spec
