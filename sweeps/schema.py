"""JSON schemas of a sweep spec and of a training config (``compsweep schema``), and the
README's tables of their fields, both generated from the validation models.

An editor with a YAML language server checks a file as it is typed once the file's first line
names the schema: ``# yaml-language-server: $schema=spec.schema.json``.

``python -m sweeps.schema`` prints the README tables (a test checks the README holds them).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from search_spaces import SPACES, branches
from sweeps.spec import SweepSpec
from trainers.config import TrainConfig
from trainers.metrics import selectable_metrics
from trainers.validation import annotation_at

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of a ``"spec"`` or a training ``"config"``."""
    if kind == "config":
        schema = TrainConfig.model_json_schema()
        schema["title"] = "compsweep training config"
    elif kind == "spec":
        schema = SweepSpec.model_json_schema()
        train = TrainConfig.model_json_schema()
        defs = schema.setdefault("$defs", {})
        defs.update(train.pop("$defs", {}))
        defs["TrainConfig"] = train
        # The base training config of every trial: typed as one (its knobs come from the space).
        description = schema["properties"]["train"].get("description", "")
        schema["properties"]["train"] = {"$ref": "#/$defs/TrainConfig", "description": description}
        schema["title"] = "compsweep sweep spec"
    else:
        raise ValueError(f"no schema {kind!r}; valid: spec, config")
    return {"$schema": DRAFT, **schema}


# --------------------------------------------------------------------------------------------
# README tables


def _field_text(model: type[BaseModel], name: str, allowed: dict[str, list[str]]) -> str:
    """A field, with its allowed values (or its own fields) in parentheses."""
    values = allowed.get(name)
    tp = annotation_at(model, (name,))
    if values is None and typing.get_origin(tp) is typing.Literal:
        values = [str(v) for v in typing.get_args(tp)]
    if values is None and isinstance(tp, type) and issubclass(tp, BaseModel):
        values = [f"`{f}`" for f in tp.model_fields]
    return f"`{name}` ({', '.join(values)})" if values else f"`{name}`"


def _section_rows(model: type[BaseModel], allowed: dict[str, dict[str, list[str]]]) -> list[str]:
    rows = []
    for name in model.model_fields:
        sub = annotation_at(model, (name,))
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            nested = allowed.get(name, {})
            fields = ", ".join(_field_text(sub, f, nested) for f in sub.model_fields)
        else:  # a plain field: what it is
            fields = model.model_fields[name].description or ""
        rows.append(f"| `{name}` | {fields} |")
    return rows


def config_table() -> str:
    """The README's table of training-config sections and their fields."""
    return "\n".join(["| section | fields |", "|---|---|", *_section_rows(TrainConfig, {})])


def spec_table() -> str:
    """The README's table of sweep-spec sections and their fields."""
    allowed = {"objective": {"metrics": selectable_metrics()}}
    rows = _section_rows(SweepSpec, allowed)
    return "\n".join(["| section | fields |", "|---|---|", *rows])


def _knob_text(knob: str, d: dict[str, Any]) -> str:
    if d["kind"] == "categorical":
        return f"`{knob}` ({', '.join(map(str, d['choices']))})"
    if d["kind"] == "fixed":
        return f"`{knob}` = {d['value']}"
    scale = ", log" if d.get("log") else ""
    return f"`{knob}` [{d['low']:g}, {d['high']:g}{scale}]"


def space_table() -> str:
    """The README's table of search spaces, their knobs and default ranges."""
    rows = ["| space | knobs and default ranges |", "|---|---|"]
    for name in SPACES:
        found = branches(name)
        if "method" in found[0]:  # a space choosing the method: its branches are other spaces
            methods = ", ".join(found[0]["method"]["choices"])
            rows.append(f"| `{name}` | `method` ({methods}), then that method's knobs |")
            continue
        knobs: dict[str, dict[str, Any]] = {}
        for b in found:
            for k, d in b.items():
                knobs.setdefault(k, d)
        rows.append(f"| `{name}` | {', '.join(_knob_text(k, d) for k, d in knobs.items())} |")
    return "\n".join(rows)


def readme_tables() -> dict[str, str]:
    return {"config": config_table(), "spec": spec_table(), "spaces": space_table()}


if __name__ == "__main__":
    for title, table in readme_tables().items():
        print(f"<!-- {title} -->\n{table}\n")
