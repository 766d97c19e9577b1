"""What training configs and sweep specs share: the error type, strict section models, and
pydantic's errors turned into one line per problem that names the field and what to put there.

Sections are strict (no ``"5"`` for 5, no ``true`` for 1), forbid unknown fields and refuse NaN
and infinities; an integer field also takes a float with an integral value (``1e5``), since that
is how people write large counts.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration with one or more problems; ``problems`` lists them all, one line each."""

    MAX_LINE = 500  # a problem quoting a pasted or fuzzed value stays readable

    def __init__(self, problems: Iterable[Any], source: str = "config") -> None:
        lines: Iterable[str] = (" ".join(str(p).split()) for p in problems)
        self.problems = [
            t if len(t) <= self.MAX_LINE else t[: self.MAX_LINE - 3] + "..." for t in lines
        ]
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its problems, not its message: Ray pickles an exception raised in a
        # trial to re-raise it in the driver, and the default rebuilds it from ``args`` (the
        # one message string), which ``__init__`` would read as one problem per character.
        return type(self), (self.problems, self.source)


@dataclass(frozen=True)
class Problem:
    """One problem: the dotted path of the field to fix ("" for the whole file) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def under(self, prefix: str) -> Problem:
        """The same problem seen from an enclosing document (``optim.lr`` -> ``train.optim.lr``)."""
        return Problem(join(prefix, self.path), self.message)


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _integral(value: Any) -> Any:
    """``1e5`` (a float to YAML 1.2) is an integer as people mean it."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _none_is_empty(value: Any) -> Any:
    """``run:`` with nothing under it is an empty section, not a wrong type."""
    return {} if value is None else value


Int = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[int, BeforeValidator(_integral), Field(ge=1)]
NonNegativeInt = Annotated[int, BeforeValidator(_integral), Field(ge=0)]
Seed = Annotated[int, BeforeValidator(_integral), Field(ge=0, lt=2**32)]
Scalar = str | int | float | bool | None


def section(model: type[BaseModel]) -> Any:
    """The annotation of a field holding section ``model`` (``null`` reads as empty)."""
    return Annotated[model, BeforeValidator(_none_is_empty)]


class Section(BaseModel):
    """A strict section of a config file: known fields only, exact types, finite numbers."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, validate_default=False
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")


@dataclass(frozen=True)
class Noun:
    """What the values of a field are called in messages ("unknown dataset 'x'")."""

    word: str


def literal_of(names: Iterable[str], noun: str = "value") -> Any:
    """``Literal[...]`` of a registry's names: the registry stays the one list of them."""
    return Annotated[Literal[tuple(names)], Noun(noun)]


def did_you_mean(word: Any, valid: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for a near miss among ``valid``, else ""."""
    names = [str(v) for v in valid]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def shown(value: Any, limit: int = 60) -> str:
    """``repr`` of a value a user wrote, cut short (fuzzed or pasted input can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def non_finite(value: Any, path: str = "") -> list[Problem]:
    """NaN and infinities anywhere inside free-form mappings (dataset options, knobs)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [Problem(path, f"must be a finite number, got {value}")]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in non_finite(v, join(path, str(k)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{path}[{i}]")]
    return []


# --------------------------------------------------------------------------------------------
# pydantic errors -> problems

_TYPE_WORDS = {
    "int_type": "expected int",
    "int_parsing": "expected int",
    "int_from_float": "expected int",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}
_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _unwrap(tp: Any) -> Any:
    """The core type of an annotation: without ``Annotated`` and without ``| None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _noun(tp: Any) -> str:
    """The :class:`Noun` of an annotation (looked for through ``| None``), else "value"."""
    if typing.get_origin(tp) is Annotated:
        found = [m.word for m in tp.__metadata__ if isinstance(m, Noun)]
        return found[0] if found else _noun(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((n for a in typing.get_args(tp) if (n := _noun(a)) != "value"), "value")
    return "value"


def annotation_at(model: type[BaseModel], loc: tuple[Any, ...], raw: bool = False) -> Any:
    """The annotation at ``loc`` inside ``model`` (``[key]`` for a mapping's keys), unwrapped
    unless ``raw``, or None when it cannot be told."""
    if len(loc) >= 2 and loc[-1] == "[key]":  # pydantic: (..., mapping, the key, "[key]")
        loc = (*loc[:-2], "[key]")
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            # pydantic keeps a field's Annotated extras apart from its annotation
            tp = (
                Annotated[(field.annotation, *field.metadata)]
                if field.metadata
                else field.annotation
            )
        elif origin is list and isinstance(part, int):
            tp = (typing.get_args(tp) or (Any,))[0]
        elif origin is dict:
            tp = (typing.get_args(tp) or (Any, Any))[0 if part == "[key]" else 1]
        else:
            return None
    return tp if raw else _unwrap(tp)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # the key itself is at fault: the path ends at it
            continue
        out = f"{out}[{part}]" if isinstance(part, int) else join(out, str(part))
    return out


def problems_from(
    error: ValidationError, model: type[BaseModel], prefix: str = ""
) -> list[Problem]:
    """One :class:`Problem` per pydantic error, worded for people: the field's dotted path, what
    it expects (valid names listed, a close one suggested) and what it got."""
    out = []
    for e in error.errors(include_url=False):
        loc = tuple(e["loc"])
        path = join(prefix, _path(loc))
        kind, value = e["type"], e.get("input")
        ctx = e.get("ctx") or {}
        if kind == "missing":
            field = annotation_at(model, loc[:-1])
            info = field.model_fields.get(str(loc[-1])) if _is_model(field) else None
            hint = f"; {info.description}" if info is not None and info.description else ""
            msg = f"missing{hint}"
        elif kind == "extra_forbidden":
            owner = annotation_at(model, loc[:-1])
            valid: Sequence[str] = list(owner.model_fields) if _is_model(owner) else []
            hint = did_you_mean(loc[-1], valid) or (
                f" (valid: {', '.join(valid)})" if valid else ""
            )
            msg = f"unknown field{hint}"
        elif kind == "literal_error":
            choices = typing.get_args(annotation_at(model, loc)) or ()
            noun = _noun(annotation_at(model, loc, raw=True))
            valid = ", ".join(str(c) for c in choices) or ctx.get("expected", "")
            msg = f"unknown {noun} {shown(value)}{did_you_mean(value, choices)}; valid: {valid}"
        elif kind in _TYPE_WORDS:
            got = type(value).__name__ if isinstance(value, Mapping | list) else shown(value)
            msg = f"{_TYPE_WORDS[kind]}, got {got}"
        elif kind == "finite_number":
            msg = f"must be a finite number, got {value}"
        elif kind in _BOUNDS:
            sign, key = _BOUNDS[kind]
            bound = ctx.get(key)
            bound = f"{bound:g}" if isinstance(bound, float) else bound
            msg = f"must be {sign} {bound}, got {shown(value)}"
        elif kind == "too_short":
            msg = f"needs at least {ctx.get('min_length')} item(s)"
        elif kind in ("string_too_long", "too_long"):
            msg = f"at most {ctx.get('max_length')} characters/items, got {len(value)}"
        elif kind in ("value_error", "assertion_error"):
            msg = str(ctx.get("error", e["msg"]))
        else:
            msg = e["msg"]
        out.append(Problem(path, msg))
    return out


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate(
    model: type[ModelT], data: Any, prefix: str = ""
) -> tuple[ModelT | None, list[Problem]]:
    """``(instance, [])`` or ``(None, problems)``; never raises on bad data."""
    try:
        return model.model_validate(data), []
    except ValidationError as e:
        return None, problems_from(e, model, prefix)


def valid_sections(
    model: type[BaseModel], data: Mapping[str, Any], problems: Iterable[Problem], prefix: str = ""
) -> dict[str, Any]:
    """The sections of ``data`` (fields of ``model`` that are section models) that have no
    problem, each validated on its own, so that later checks run on every part that is sound."""
    bad = {p.path[len(prefix) :].lstrip(".").split(".")[0].split("[")[0] for p in problems}
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        sub = _unwrap(field.annotation)
        if name in bad or not _is_model(sub):
            continue
        raw = data.get(name)
        if raw is None and field.is_required():
            continue
        try:
            out[name] = sub.model_validate({} if raw is None else raw)
        except ValidationError:  # a problem the caller did not pass in
            continue
    return out
