"""Training configuration: dataclasses split by concern, loaded from YAML and validated in full.

Every problem found is collected and raised at once as a :class:`ConfigError`, each message
naming the field (``optim.lr``) and what to put there.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration with one or more problems; ``problems`` lists them all."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


@dataclass
class DataConfig:
    name: str = "digits"
    batch_size: int = 64
    test_batch_size: int = 1000
    root: str | None = None
    download: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    val_fraction: float = 0.1  # training samples held out for validation (fixed seed); 0: none
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0  # the optimizer's own L2, independent of any distortion
    schedule: str = "constant"  # constant | step | multistep | cosine
    step_size: float = 30.0  # epochs, for "step"
    milestones: list[float] = field(default_factory=list)  # epochs, for "multistep"
    gamma: float = 0.1


@dataclass
class TargetConfig:
    """Which weights are distorted: conv/linear/LSTM weights, minus the exclusions."""

    skip_first_conv: bool = True
    min_params: int = 100  # layers smaller than this gain nothing from compression
    include: list[str] = field(default_factory=list)  # fnmatch patterns on parameter names
    exclude: list[str] = field(default_factory=list)


@dataclass
class CompressionConfig:
    method: str = "none"  # a distortion registry name, or "none" for plain training
    pnr: int | str = 1  # optimizer steps between distortion events, or "epoch" (one epoch)
    params: dict[str, Any] = field(default_factory=dict)
    targets: TargetConfig = field(default_factory=TargetConfig)


@dataclass
class RunConfig:
    epochs: float | None = None
    steps: int | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: float = 1.0  # epochs between evaluations (taken at the next distortion event)
    bn_reestimate: int = 0  # training batches to re-estimate BatchNorm statistics before eval
    probe_batch_size: int | None = None  # batch for loss_pre/loss_post; default the train batch
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    flush_subnormals: bool = True  # CPU: subnormal floats read and written as 0 during fit()


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the (resolved) annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_check_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``, appending every problem to ``problems``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(names)})"
            problems.append(f"{path}: unknown field{hint}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path, problems)
        elif _check_type(value, tp):
            kwargs[key] = float(value) if tp is float and isinstance(value, int) else value
        else:
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return cls(**kwargs)


def check_train_config(cfg: TrainConfig) -> list[str]:
    """Semantic checks that need no data or model (those come when the trainer is built)."""
    # Imported here: registries import torch, and the dataclasses above must stay light.
    from trainers.data import DATASETS
    from trainers.distortions import REGISTRY, make_distortion
    from trainers.models import MODELS

    p: list[str] = []
    if cfg.data.name not in DATASETS:
        p.append(
            f"data.name: unknown dataset {cfg.data.name!r}; valid: {', '.join(sorted(DATASETS))}"
        )
    if cfg.data.batch_size < 1:
        p.append(f"data.batch_size: must be >= 1, got {cfg.data.batch_size}")
    if not 0 <= cfg.data.val_fraction < 1:
        p.append(
            f"data.val_fraction: must be >= 0 and < 1 (0: no validation split), got {cfg.data.val_fraction}"
        )
    if cfg.model.name not in MODELS:
        p.append(
            f"model.name: unknown model {cfg.model.name!r}; valid: {', '.join(sorted(MODELS))}"
        )
    o = cfg.optim
    if o.optimizer not in ("sgd", "adam"):
        p.append(f"optim.optimizer: must be 'sgd' or 'adam', got {o.optimizer!r}")
    if o.lr <= 0:
        p.append(f"optim.lr: must be > 0, got {o.lr}")
    if o.schedule not in ("constant", "step", "multistep", "cosine"):
        p.append(f"optim.schedule: must be constant, step, multistep or cosine, got {o.schedule!r}")
    if o.schedule == "step" and o.step_size <= 0:
        p.append(f"optim.step_size: must be > 0 epochs, got {o.step_size}")
    c = cfg.compression
    if c.method != "none":
        if c.method not in REGISTRY:
            p.append(
                f"compression.method: unknown method {c.method!r}; valid: none, {', '.join(sorted(REGISTRY))}"
            )
        else:
            try:
                make_distortion(c.method, **c.params)
            except ValueError as e:
                p.append(f"compression.params: {e}")
    if isinstance(c.pnr, str) and c.pnr != "epoch":
        p.append(
            f"compression.pnr: expected int, got {c.pnr!r}; give the optimizer steps between "
            "distortions, or 'epoch' for one epoch"
        )
    elif isinstance(c.pnr, int) and c.pnr < 1:
        p.append(
            f"compression.pnr: must be an integer >= 1 (optimizer steps between distortions), got {c.pnr}"
        )
    r = cfg.run
    if (r.epochs is None) == (r.steps is None):
        p.append("run: give exactly one of run.epochs or run.steps")
    if r.epochs is not None and r.epochs <= 0:
        p.append(f"run.epochs: must be > 0, got {r.epochs}")
    if r.steps is not None and r.steps < 1:
        p.append(f"run.steps: must be >= 1, got {r.steps}")
    if r.eval_every <= 0:
        p.append(f"run.eval_every: must be > 0 epochs, got {r.eval_every}")
    if r.bn_reestimate < 0:
        p.append(f"run.bn_reestimate: must be >= 0 batches, got {r.bn_reestimate}")
    return p


def parse_train_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a mapping in full and return the config, or raise :class:`ConfigError`."""
    problems: list[str] = []
    cfg = from_dict(TrainConfig, data, "", problems)
    if not problems:
        problems += check_train_config(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config (plus dotted-key ``overrides``) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"no such file: {path}"], str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse_train_config(data, str(path))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "optim.lr", 0.1)`` sets ``d["optim"]["lr"]``, creating mappings on the way."""
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value
