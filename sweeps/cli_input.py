"""The command line's shared input: ``--set`` lines, a sweep spec with its overrides, a
``--tracking-uri`` given on the command line, the tracking store a sweep is looked up in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sweeps.records import SWEEP_FILE
from sweeps.secrets import redact
from sweeps.tracking_uri import (
    default_tracking_uri,
    lookup_problem,
    missing_store,
    tracking_uri_problem,
)
from trainers import yamlio
from trainers.validation import ConfigError, Problem, shown


def set_lines(lines: list[str] | None) -> tuple[list[tuple[str, Any]], list[Problem]]:
    """``--set KEY=VALUE`` lines as (dotted key, value) pairs; values read as YAML (``1e-3`` is a
    number), one problem per line that is no ``KEY=VALUE`` or holds broken YAML."""
    pairs, problems = [], []
    for text in lines or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            problems.append(
                Problem("--set", f"{shown(text)}: give KEY=VALUE, e.g. --set optim.lr=0.01")
            )
            continue
        try:
            pairs.append((key.strip(), yamlio.parse_scalar(value, strict=True)))
        except yamlio.YamlError as e:
            problems.append(Problem(f"--set {key.strip()}", str(e)))
    return pairs, problems


def check_tracking_uri_arg(uri: str | None) -> None:
    """A ``--tracking-uri`` MLflow could not use is bad input, said in one line."""
    if uri is None:
        return
    problem = tracking_uri_problem(uri)
    if problem:
        raise ConfigError([problem], f"--tracking-uri {redact(uri)}")


def check_lookup_store(uri: str | None, sweep: str | None) -> None:
    """Before ``status``, ``analyze``, ``best``, ``stop`` or ``resume`` reads MLflow: the store
    a sweep is looked up in (``uri``, else the default; none for a sweep folder, which names its
    own) must be one MLflow can use, exist, and answer within seconds. MLflow's client would
    otherwise create an empty SQLite store at a mistyped path, or retry an unreachable server
    for minutes.

    Raises:
        ConfigError: one line saying what is wrong (exit 2).
    """
    if uri is None and sweep is not None and (Path(sweep) / SWEEP_FILE).is_file():
        return
    used = uri or default_tracking_uri()
    if uri is None and sweep is None and missing_store(used) is not None:
        return  # listing the sweeps needs no default store (there is none before a first sweep)
    problem = lookup_problem(used)
    if problem:
        source = (
            "--tracking-uri" if uri
            else "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
            else "the default tracking store"
        )  # fmt: skip
        raise ConfigError([problem], f"{source} {redact(used)}")


def read_spec(
    path: str, lines: list[str] | None, check_tracking: bool = True, check_storage: bool = True
) -> tuple[Any, list[tuple[str, Any]]]:
    """The validated spec at ``path`` with its ``--set`` lines applied, and those lines; every
    problem (of the file, the lines and the spec) raised at once as a SpecError."""
    # Validation reads the data and builds the models (torch): only for commands that take a spec.
    from sweeps import spec_checks
    from sweeps.spec import SpecError, SweepSpec
    from trainers.config import apply_overrides, read_mapping

    overrides, problems = set_lines(lines)
    try:
        data = read_mapping(path, "sweep spec", SweepSpec.model_fields, SpecError)
    except SpecError as e:
        raise SpecError([*problems, *e.problems], path) from None
    problems += apply_overrides(data, overrides)
    spec, found = spec_checks.spec_problems(
        data, check_tracking=check_tracking, check_storage=check_storage
    )
    if problems or found or spec is None:
        raise SpecError([*problems, *found], path)
    return spec, overrides


def output_path_problems(path: Path, flag: str) -> list[Problem]:
    """A file a command writes (a checkpoint at every evaluation, --save at the end of a
    training, best's -o once the sweep is read): its folder must exist and be writable before
    the work starts, not when the file is written."""
    where = f"{flag} {path}"
    if path.is_dir():
        return [Problem(where, "is a folder; give a file path, e.g. run.pt")]
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return [Problem(where, "cannot be read and rewritten (permissions)")]
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        return [Problem(where, f"folder {folder} does not exist; create it or choose another")]
    if not folder.is_dir():
        return [Problem(where, f"{folder} is a file, not a folder")]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [Problem(where, f"cannot write in {folder}")]
    return []
