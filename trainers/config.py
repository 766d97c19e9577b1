"""Training configuration: declarative sections, read from YAML and validated in full.

Every problem found is collected and raised at once as a :class:`ConfigError`, one line each,
naming the field (``optim.lr``) and what to put there. Validation has two passes:

1. the models below (types, bounds, allowed names, unknown fields, finite numbers), then the
   option and knob names and types of the chosen dataset, model and compression method, read
   from their signatures (:func:`validate_train`);
2. checks that need the data and the model's weights (:mod:`trainers.model_checks`), run by
   the trainer when it is built and by sweep validation for every section pass 1 found sound.

The allowed names come from the registries (datasets, models, methods, optimizers, schedules),
which stay the one place they are listed.
"""

from __future__ import annotations

import functools
import inspect
import operator
import re
import types
import typing
from collections import abc
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from trainers import yamlio
from trainers.data import DATASETS
from trainers.distortions import REGISTRY, distortion_class, make_distortion
from trainers.models import MODELS
from trainers.optim import LR_SCHEDULES, OPTIMIZERS
from trainers.registry import keyword_parameters
from trainers.validation import (
    ConfigError,
    Int,
    NonNegativeInt,
    PositiveInt,
    Problem,
    Section,
    Seed,
    did_you_mean,
    join,
    literal_of,
    non_finite,
    section,
    shown,
    valid_sections,
    validate,
)

__all__ = [
    "CompressionConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TargetConfig",
    "TrainConfig",
    "check_train_config",
    "load_train_config",
    "parse_train_config",
    "read_mapping",
    "set_dotted",
    "apply_overrides",
    "validate_train",
]

DatasetName = literal_of(DATASETS, "dataset")
ModelName = literal_of(MODELS, "model")
MethodName = literal_of(["none", *REGISTRY], "method")
OptimizerName = literal_of(OPTIMIZERS, "optimizer")
LrScheduleName = literal_of(LR_SCHEDULES, "schedule")
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class DataConfig(Section):
    name: DatasetName = Field("digits", description="the dataset")
    batch_size: PositiveInt = Field(64, description="training batch size")
    test_batch_size: PositiveInt = Field(1000, description="evaluation batch size")
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="fraction of the training set held out (stratified, seeded) as the "
        "validation split; 0: none",
    )
    root: str | None = Field(None, description="folder holding the data files")
    download: bool = Field(False, description="let torchvision download missing data")
    limit_train: PositiveInt | None = Field(None, description="keep the first N training samples")
    limit_test: PositiveInt | None = Field(None, description="keep the first N test samples")
    options: dict[str, Any] = Field(
        default_factory=dict, description="dataset-specific options (e.g. augment for cifar10)"
    )


class ModelConfig(Section):
    name: ModelName = Field("small_cnn", description="the model architecture")
    options: dict[str, Any] = Field(default_factory=dict, description="model-specific options")


class OptimConfig(Section):
    optimizer: OptimizerName = Field("sgd", description="the optimizer")
    lr: float = Field(0.05, gt=0, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum, in [0, 1)")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(
        0.0, ge=0, description="the optimizer's own L2, independent of any distortion"
    )
    schedule: LrScheduleName = Field("constant", description="learning-rate schedule")
    step_size: float = Field(30.0, gt=0, description="epochs between decays, for step")
    milestones: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=list, description="epochs at which to decay, for multistep"
    )
    gamma: float = Field(0.1, gt=0, description="decay factor of step and multistep")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, milestones: list[float]) -> list[float]:
        # multistep decays once per milestone passed: a repeat would decay twice at once, and
        # an unsorted list reads as a schedule it is not.
        if any(b <= a for a, b in zip(milestones, milestones[1:], strict=False)):
            raise ValueError(f"must increase, each epoch once, got {milestones}")
        return milestones

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimConfig:
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class TargetConfig(Section):
    """Which weights are distorted: conv/linear/LSTM weights, minus the exclusions."""

    skip_first_conv: bool = Field(True, description="leave the first conv dense")
    min_params: NonNegativeInt = Field(
        100, description="layers with fewer weights are left dense (they gain nothing)"
    )
    include: list[str] = Field(
        default_factory=list, description="glob patterns on parameter names: exactly these"
    )
    exclude: list[str] = Field(default_factory=list, description="glob patterns to leave out")


class CompressionConfig(Section):
    method: MethodName = Field(
        "none", description="a distortion or recipe name, or none for plain training"
    )
    pnr: Annotated[int, Field(ge=1)] | Literal["epoch"] = Field(
        1, description="optimizer steps between distortion events, or epoch"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the method's knobs")
    targets: section(TargetConfig) = Field(default_factory=TargetConfig)

    @field_validator("pnr", mode="before")
    @classmethod
    def _pnr(cls, v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if v == "epoch":
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(
                f"expected int, got {shown(v)}; give the optimizer steps between distortions, "
                "or 'epoch' for one epoch"
            )
        if v < 1:
            raise ValueError(
                f"must be an integer >= 1 (optimizer steps between distortions), got {v}"
            )
        return v


class RunConfig(Section):
    epochs: float | None = Field(None, gt=0, description="length of the run in epochs")
    steps: PositiveInt | None = Field(None, description="length of the run in optimizer steps")
    seed: Seed = Field(0, description="seed of data order, initialization and noise")
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = Field(
        "auto", description="auto, cpu, cuda or cuda:N"
    )
    eval_every: float = Field(
        1.0, gt=0, description="epochs between evaluations (taken at the next distortion event)"
    )
    bn_reestimate: NonNegativeInt = Field(
        0, description="training batches to re-estimate BatchNorm statistics before evaluating"
    )
    probe_batch_size: PositiveInt | None = Field(
        None, description="batch for loss_pre/loss_post; default the training batch"
    )
    measure_every: PositiveInt | None = Field(
        None,
        description="measure loss_pre/loss_post at every N-th distortion event (and at each "
        "evaluation); default: the smallest N whose measurements stay within measure_budget",
    )
    measure_budget: float = Field(
        0.02,
        gt=0,
        le=1,
        description="share of the training compute the loss measurements of distortion events "
        "may take, which sets the default measure_every",
    )
    threads: PositiveInt | None = Field(
        None, description="torch intra-op threads; default one per CPU available to the process"
    )
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms")
    flush_subnormals: bool = Field(True, description="CPU: read and write subnormals as 0")

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> Any:
        if isinstance(v, str) and not _matches(DEVICE_PATTERN, v):
            raise ValueError(f"unknown device {shown(v)}; valid: auto, cpu, cuda, cuda:N")
        return v

    @model_validator(mode="after")
    def _one_length(self) -> RunConfig:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of run.epochs or run.steps")
        return self


class TrainConfig(Section):
    data: section(DataConfig) = Field(default_factory=DataConfig)
    model: section(ModelConfig) = Field(default_factory=ModelConfig)
    optim: section(OptimConfig) = Field(default_factory=OptimConfig)
    compression: section(CompressionConfig) = Field(default_factory=CompressionConfig)
    run: section(RunConfig) = Field(
        description="how long to train (epochs or steps), seed, device and evaluations"
    )


def _matches(pattern: str, text: str) -> bool:
    return re.match(pattern, text) is not None


# --------------------------------------------------------------------------------------------
# Pass 1b: option and knob names and types, from the signatures of what they are passed to


def _relaxed(tp: Any) -> Any:
    """A signature's annotation as the validator should take it: ``int`` also from ``1e3``, a
    tuple also from a YAML list; anything unusual is taken as is (``Any``)."""
    origin = typing.get_origin(tp)
    if tp is int:
        return Int
    if tp in (float, str, bool, type(None)) or tp is Any:
        return tp
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, (_relaxed(a) for a in typing.get_args(tp)))
    if origin in (tuple, list, abc.Sequence, abc.Iterable):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return list[_relaxed(args[0]) if len(set(args)) == 1 else Any]  # type: ignore[misc]
    if origin is dict:
        key, value = typing.get_args(tp) or (str, Any)
        return dict[key, _relaxed(value)]  # type: ignore[misc]
    return Any


@functools.cache
def _signature_model(fn: Callable[..., Any], skip: int) -> tuple[type[Section], tuple[str, ...]]:
    """A strict model of ``fn``'s keyword parameters (after the first ``skip``), and their names."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    if inspect.isclass(target):
        target = target.__init__
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: check names only
        hints = {}
    fields: dict[str, Any] = {}
    for p in keyword_parameters(fn, skip):
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (_relaxed(hints.get(p.name, Any)), default)
    model = create_model(f"{getattr(target, '__qualname__', 'fn')}Args", __base__=Section, **fields)
    return model, tuple(fields)


def call_problems(
    fn: Callable[..., Any], kwargs: Any, path: str, what: str, noun: str, skip: int = 0
) -> list[Problem]:
    """Problems with calling ``fn(**kwargs)``: unknown names (a close one suggested), missing
    required ones, wrong types, NaN — each at ``path.<name>``."""
    model, names = _signature_model(fn, skip)
    unknown = [k for k in kwargs if k not in names]
    problems = [
        Problem(
            join(path, str(k)),
            f"unknown {noun} of {what}{did_you_mean(k, names)}; its {noun}s are: "
            f"{', '.join(names) or 'none'}",
        )
        for k in unknown
    ]
    known = {k: v for k, v in kwargs.items() if k in names}
    _, type_problems = validate(model, known, path)
    for p in type_problems:
        if p.message.startswith("missing"):
            p = Problem(p.path, f"missing; {what} needs a value for it")
        problems.append(p)
    seen = {p.path for p in problems}
    return problems + [p for p in non_finite(known, path) if p.path not in seen]


def _sound(problems: Iterable[Problem], path: str) -> bool:
    """Whether no problem concerns the field at ``path`` (itself, inside it, or around it)."""
    for p in problems:
        if (
            p.path == path
            or path.startswith(p.path + ".")
            or p.path.startswith((path + ".", path + "["))
        ):
            return False
    return True


def _given(data: Mapping[str, Any], section: str, field: str, default: Any) -> Any:
    raw = data.get(section)
    value = raw.get(field) if isinstance(raw, Mapping) else None
    return default if value is None else value


def _option_problems(data: Mapping[str, Any], problems: list[Problem]) -> list[Problem]:
    """Option names and types of the chosen dataset and model (when their names are sound)."""
    out = []
    for sec, registry, noun in (("data", DATASETS, "dataset"), ("model", MODELS, "model")):
        if _sound(problems, f"{sec}.name") and _sound(problems, f"{sec}.options"):
            name = _given(data, sec, "name", TrainConfig.model_fields[sec].default_factory().name)  # type: ignore[call-arg,misc]
            options = _given(data, sec, "options", {})
            out += call_problems(
                registry[name], options, f"{sec}.options", f"{noun} {name!r}", "option", 1
            )
    return out


def knob_problems(
    method: str, params: Mapping[str, Any], path: str = "compression.params"
) -> list[Problem]:
    """Problems with the knobs of compression ``method``: names and types from its signature,
    then the method's own checks (ranges, combinations)."""
    if method == "none":
        return []
    problems = call_problems(distortion_class(method), params, path, method, "knob")
    if problems:
        return problems
    try:
        make_distortion(method, **params)
    except ValueError as e:
        return [Problem(path, str(e))]
    except Exception as e:  # a knob value the method's own checks did not foresee
        return [Problem(path, f"{method} does not accept these knobs ({type(e).__name__}: {e})")]
    return []


def validate_train(
    data: Any, *, knobs: bool = True
) -> tuple[TrainConfig | None, dict[str, Any], list[Problem]]:
    """Pass 1 over a training-config mapping: ``(config or None, sound sections, problems)``.

    ``knobs=False`` leaves out the compression knobs (a sweep's base ``train`` section gets them
    from the search space). The sound sections are those without problems, for pass 2.
    """
    cfg, problems = validate(TrainConfig, data)
    if not isinstance(data, Mapping):
        return None, {}, problems
    # Names and types the models cannot see (they depend on the chosen dataset, model and
    # method), checked wherever those choices are sound, even if other fields are not.
    more = _option_problems(data, problems)
    if knobs and _sound(problems, "compression.method") and _sound(problems, "compression.params"):
        method = _given(data, "compression", "method", "none")
        more += knob_problems(method, _given(data, "compression", "params", {}))
    problems = problems + more
    if more:
        cfg = None
    return cfg, valid_sections(TrainConfig, data, problems), problems


def parse_train_config(data: Any, source: str = "config") -> TrainConfig:
    """Validate a mapping in full and return the config, or raise :class:`ConfigError`."""
    cfg, _, problems = validate_train(data)
    if problems or cfg is None:
        raise ConfigError(problems or ["expected a mapping of sections"], source)
    return cfg


def check_train_config(cfg: TrainConfig) -> list[str]:
    """Every pass-1 problem of ``cfg`` (which may have been changed since it was parsed)."""
    return [str(p) for p in validate_train(cfg.to_dict())[2]]


# --------------------------------------------------------------------------------------------
# Files and overrides


def read_mapping(
    path: str | Path,
    what: str,
    sections: Iterable[str],
    error: type[ConfigError] = ConfigError,
) -> dict[str, Any]:
    """The mapping in YAML file ``path``; a missing, empty, unreadable, non-UTF-8 or invalid
    file, or one that holds something else, raises ``error`` with a one-line problem (a line
    per key repeated in a mapping)."""
    source = str(path)
    try:
        data = yamlio.load_file(path)
    except yamlio.YamlError as e:
        raise error(e.problems or [str(e).removeprefix(f"{source}: ")], source) from None
    names = ", ".join(sections)
    if data is None:
        raise error([f"the file is empty; a {what} is a mapping of {names}"], source)
    if not isinstance(data, dict):
        raise error([f"expected a {what}: a mapping of {names}, got {type(data).__name__}"], source)
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "optim.lr", 0.1)`` sets ``d["optim"]["lr"]``, creating mappings on the way.

    Raises ``ValueError`` if the way passes through a value that is not a mapping."""
    *parents, last = key.split(".")
    where = []
    for part in parents:
        where.append(part)
        if data.get(part) is None:
            data[part] = {}
        if not isinstance(data[part], dict):
            raise ValueError(
                f"{'.'.join(where)} is {shown(data[part])}, not a section with fields; "
                f"set {'.'.join(where)}=VALUE, or a field of a section"
            )
        data = data[part]
    data[last] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[tuple[str, Any]]) -> list[Problem]:
    """Set each ``(dotted key, value)`` in ``data``; one problem per override that cannot be."""
    problems = []
    for key, value in overrides:
        parts = key.split(".")
        if not key or any(not p.strip() for p in parts):
            problems.append(
                Problem("--set", f"{shown(key)}: a field path needs names between dots")
            )
            continue
        try:
            set_dotted(data, key, value)
        except ValueError as e:
            problems.append(Problem(f"--set {key}", str(e)))
    return problems


def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config (plus dotted-key ``overrides``) and validate it."""
    data = read_mapping(path, "training config", TrainConfig.model_fields)
    problems = apply_overrides(data, (overrides or {}).items())
    try:
        cfg = parse_train_config(data, str(path))
    except ConfigError as e:
        raise ConfigError([*map(str, problems), *e.problems], str(path)) from None
    if problems:
        raise ConfigError(problems, str(path))
    return cfg
