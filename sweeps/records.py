"""What a sweep leaves behind and hands around: its record file, its facts, the file names.

Light on purpose (no Ray, MLflow, torch or Optuna at import): the CLI, ``status`` and the
lookup of sweeps read these without paying for the libraries that run a sweep.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for a type only: sweeps.outcomes imports sweeps.tracking, which imports this
    from sweeps.outcomes import Outcome

SWEEP_FILE = "compsweep.json"  # the record, in the sweep folder
STUDY_FILE = "optuna.db"  # the Optuna study's default SQLite store, in the sweep folder
TRAINER_FILE = "trainer.pt"  # in a trial checkpoint: the full trainer state
TRACKER_FILE = "tracker.pkl"  # in a trial checkpoint: the tracker's unsent points and run id


@dataclass(frozen=True)
class SweepFacts:
    """The fixed facts of a sweep that a trial and the settling of its runs need: where it is
    tracked, and its spec (as a mapping; empty where only the runs matter)."""

    sweep_id: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    spec: dict[str, Any] = field(default_factory=dict)

    def run_ids(self) -> dict[str, str]:
        """The sweep's tracking coordinates, as a trial's tracker takes them."""
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "sweep_id": self.sweep_id,
            "parent_run_id": self.parent_run_id,
        }


@dataclass
class SweepRecord:
    """What identifies a sweep across processes: stored as ``compsweep.json``."""

    sweep_id: str
    path: str  # Tune's experiment directory
    spec: dict[str, Any]
    tracking_uri: str  # without credentials (those travel in MLFLOW_TRACKING_USERNAME/PASSWORD)
    experiment_id: str
    parent_run_id: str
    forward_env: list[str] = field(default_factory=list)  # variables sent to trials on a cluster
    study_storage: str = ""  # the Optuna study's storage URL
    # How the last driver's run of the sweep ended (not saved).
    outcome: Outcome | None = field(default=None, repr=False, compare=False)

    def save(self) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "outcome"
        }
        tmp = Path(self.path) / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(Path(self.path) / SWEEP_FILE)

    @classmethod
    def load(cls, path: str | Path) -> SweepRecord:
        f = Path(path) / SWEEP_FILE
        if not f.is_file():
            raise FileNotFoundError(
                f"{path} is not a sweep directory (no {SWEEP_FILE}); pass the folder `compsweep run` printed, or a sweep id"
            )
        data = json.loads(f.read_text())
        known = {f.name for f in dataclasses.fields(cls)} - {"outcome"}
        return cls(**{k: v for k, v in data.items() if k in known})

    def facts(self) -> SweepFacts:
        return SweepFacts(
            sweep_id=self.sweep_id,
            tracking_uri=self.tracking_uri,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_run_id,
            spec=self.spec,
        )


def new_sweep_id(name: str) -> str:
    """``name-YYYYmmdd-HHMMSS-xxxx``: sortable by start, unique even within one second."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# The suffix new_sweep_id appends; a name may itself hold dashes and digits ("probe-2-20260101").
_SWEEP_ID_SUFFIX = re.compile(r"-\d{8}-\d{6}-[0-9a-f]{4}$")


def sweep_name(sweep_id: str) -> str:
    """The name a sweep id was made from (``probe-div`` from ``probe-div-20261202-101500-ab12``);
    an id not made by :func:`new_sweep_id` is its own name."""
    return _SWEEP_ID_SUFFIX.sub("", sweep_id) or sweep_id


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` → ``{"optim.lr": 0.1}`` (an empty mapping stays a value)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
