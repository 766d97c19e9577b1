"""What compsweep writes into MLflow, named once (docs/design.md §7): tag names, MLflow's
size limits, and how params and ids are shaped to fit them.

Imports nothing heavy: trial processes, the driver and `compsweep train` all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeps.records import flatten

ROLE_TAG = "compsweep.role"
SWEEP_ID_TAG = "compsweep.sweep_id"
TRIAL_ID_TAG = "compsweep.trial_id"
METHOD_TAG = "compsweep.method"
# A final training's own id: its run is found by it (a create whose answer was lost) and
# never confused with another final training of the same sweep.
FINAL_ID_TAG = "compsweep.final_id"
SOURCE_TRIAL_ID_TAG = "compsweep.source_trial_id"
SOURCE_RUN_ID_TAG = "compsweep.source_run_id"
PARENT_TAG = "mlflow.parentRunId"
# How a trial (or sweep) ended, beyond MLflow's FINISHED / FAILED / KILLED: finished, failed,
# diverged, stopped (early, by the scheduler) or killed (by the user); and why, in words.
STATUS_TAG = "compsweep.status"
STATUS_REASON_TAG = "compsweep.status_reason"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the MLflow 3 UI then opens on runs and charts

# MLflow limits (mlflow.utils.validation in 3.x; hard-coded so the hot path imports nothing).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VAL_LENGTH = 6000  # was 500 before MLflow 2.x; the server enforces its own
MAX_TAG_VAL_LENGTH = 8000

# A metric point: (key, value, timestamp in ms, step).
Point = tuple[str, float, int, int]


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """``{"optim": {"lr": 0.1}}`` → ``{"optim.lr": "0.1"}``: :func:`sweeps.records.flatten`
    with values stringified and cut to MLflow's length limit."""
    return {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in flatten(params).items()}


def tag_items(tags: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Tags as (key, value) strings, values cut to MLflow's length limit."""
    return [(str(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]


def search_literal(value: str) -> str:
    """A string literal for an MLflow search filter."""
    if "'" in value:
        raise ValueError(f"ids used in MLflow searches may not contain quotes: {value!r}")
    return f"'{value}'"


def safe_name(text: str) -> str:
    """``text`` as one file-name component."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "_"
