"""The one catalogue of metrics a run reports: name, better direction, format, when logged.

Everything that names, ranks or prints a metric reads it from here: spec validation (which
metrics an objective may use), the sweep objective and ASHA (direction), ``compsweep best
--metric`` (sort order), the e_opt analysis, the progress lines and the tables (format).

Selection is made on validation data, never on test data: a metric of ``split="test"`` is
logged for information and refused as an objective or ranking metric. Metrics without a better
direction (e.g. ``e_w``: neither more nor less weight change is "better") cannot rank trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")

Direction = Literal["max", "min"]
When = Literal["event", "evaluation", "final"]
Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class Metric:
    """One reported metric.

    Attributes:
        name: the key in MLflow, in Tune results and in the trainer's metric dicts.
        direction: "max" or "min" when a larger / smaller value is better, else None.
        fmt: format spec for printing (``format(value, fmt)``).
        when: "event" (every distortion event), "evaluation" (every evaluation; the run's
            latest value is the one after the last distortion) or "final" (once, at the end).
        split: the data it is measured on, where that matters.
        doc: what it is, for tables and ``--help``.
    """

    name: str
    direction: Direction | None
    fmt: str
    when: When
    split: Split | None
    doc: str

    @property
    def selectable(self) -> bool:
        """May rank trials (an objective, ASHA, ``best --metric``): has a direction and is
        not measured on the test split."""
        return self.direction is not None and self.split != "test"

    def format(self, value: float | None) -> str:
        if value is None or not isinstance(value, int | float):
            return "-"
        return format(value, self.fmt)


# fmt: off
_ALL = [
    # every distortion event
    Metric("e_w", None, ".3e", "event", None, "mean |w - h(w)| over the target weights"),
    Metric("e_w_per_pnr", None, ".3e", "event", None, "e_w / pNR: weight change per step"),
    Metric("delta_w", None, ".3e", "event", None, "||w - h(w)||^2 / N"),
    Metric("loss_pre", None, ".4f", "event", "train", "probe-batch loss before the distortion"),
    Metric("loss_post", None, ".4f", "event", "train", "probe-batch loss after the distortion"),
    Metric("delta_loss_ratio", None, "+.4f", "event", "train", "(loss_post - loss_pre) / loss_pre"),
    # every evaluation
    Metric("epoch", None, ".2f", "evaluation", None, "epochs trained at the evaluation"),
    Metric("train_loss", "min", ".4f", "evaluation", "train", "mean training loss since the last evaluation"),
    Metric("val_acc_pre", "max", ".4f", "evaluation", "val", "validation accuracy right before the distortion"),
    Metric("val_accuracy", "max", ".4f", "evaluation", "val", "validation accuracy right after the distortion (the compressed model); the default objective"),
    Metric("val_loss", "min", ".4f", "evaluation", "val", "validation loss of the compressed model"),
    Metric("test_accuracy", "max", ".4f", "evaluation", "test", "test accuracy of the compressed model (reported, never selected on)"),
    Metric("test_loss", "min", ".4f", "evaluation", "test", "test loss of the compressed model (reported, never selected on)"),
    # once, at the end
    Metric("compression_ratio", "max", ".2f", "final", None, "dense params / compressed params"),
    Metric("params", "min", ".0f", "final", None, "parameters of the compressed model"),
    Metric("params_dense", None, ".0f", "final", None, "parameters of the dense model"),
    Metric("macs", "min", ".0f", "final", None, "multiply-accumulates per sample, compressed"),
    Metric("macs_dense", None, ".0f", "final", None, "multiply-accumulates per sample, dense"),
    Metric("mean_e_w", None, ".3e", "final", None, "e_w averaged over the run's events"),
    Metric("mean_e_w_per_pnr", None, ".3e", "final", None, "mean_e_w / pNR: the x axis of e_opt"),
    Metric("steps", None, ".0f", "final", None, "optimizer steps trained"),
    Metric("num_distortions", None, ".0f", "final", None, "distortion events"),
]
# fmt: on

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
DEFAULT_OBJECTIVE = "val_accuracy"


def get_metric(name: str) -> Metric:
    """The catalogue entry of ``name``; an unknown name raises ``ValueError`` listing them."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}") from None


def selectable_metrics() -> list[str]:
    """Metrics that may rank trials (objectives, ASHA, ``best --metric``)."""
    return [m.name for m in _ALL if m.selectable]


def check_selectable(name: str) -> str | None:
    """None if ``name`` may rank trials, else a message saying why not and what may."""
    valid = ", ".join(selectable_metrics())
    if name not in METRICS:
        return f"unknown metric {name!r}; rank by one of: {valid}"
    m = METRICS[name]
    if m.split == "test":
        return f"{name!r} is measured on the test split, which is never used to select; rank by one of: {valid}"
    if m.direction is None:
        return f"{name!r} has no better direction; rank by one of: {valid}"
    return None


def final_only(names: list[str] | tuple[str, ...]) -> list[str]:
    """Those of ``names`` that a run reports once, at its end (e.g. ``compression_ratio``):
    an evaluation before the end has no value of them."""
    return [n for n in names if get_metric(n).when == "final"]


def validation_metrics() -> list[str]:
    """Metrics of the validation split that may select: what ``compsweep analyze`` can locate
    optima on."""
    return [m.name for m in _ALL if m.selectable and m.split == "val"]


def rank_key(name: str, value: float | None) -> float:
    """Sort key putting the best value of metric ``name`` first (ascending sort); a missing or
    non-finite value sorts last, so NaN and inf never rank."""
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return math.inf
    return -value if get_metric(name).direction == "max" else value


def pareto_set(items: Iterable[T], keys: Callable[[T], Sequence[float]]) -> list[T]:
    """The items no other beats on every one of their ``keys`` (lower is better, as
    :func:`rank_key` gives them), best first by the keys in order."""
    scored = [(tuple(keys(x)), x) for x in items]

    def dominated(k: tuple[float, ...]) -> bool:
        return any(o != k and all(a <= b for a, b in zip(o, k, strict=True)) for o, _ in scored)

    return [x for k, x in sorted(scored, key=lambda s: s[0]) if not dominated(k)]


def format_metrics(
    values: dict[str, float], names: list[str] | tuple[str, ...], sep: str = ", "
) -> str:
    """``name value`` for each of ``names`` present in ``values`` (once each, in order),
    formatted as the catalogue says; for progress lines and summaries."""
    names = [n for n in dict.fromkeys(names) if n in values]
    return sep.join(f"{n} {get_metric(n).format(values[n])}" for n in names)
