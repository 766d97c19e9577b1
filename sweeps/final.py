"""Final training of a sweep's winner: longer schedule, logged to MLflow as a ``final`` run
linked to its source trial, exported compressed, and registered in the Model Registry.

The winner was selected on validation data; its final training uses train + validation
(``data.val_fraction: 0``, unless overridden) and reports test metrics, which nothing selected
on."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

import trainers
from sweeps.quiet import library_prints
from sweeps.records import sweep_name
from sweeps.secrets import redact
from sweeps.tracking import (
    METHOD_TAG,
    SOURCE_RUN_ID_TAG,
    SOURCE_TRIAL_ID_TAG,
    STATUS_REASON_TAG,
    STATUS_TAG,
    SWEEP_ID_TAG,
    FinalTracker,
    default_tracking_uri,
    ensure_experiment,
    mlflow_client,
)
from trainers.callbacks import Callback, ConsoleProgress
from trainers.config import ConfigError, TrainConfig, parse_train_config, read_mapping, set_dotted
from trainers.counting import count_macs, count_params
from trainers.export import export
from trainers.inputs import to_raw, with_raw_input
from trainers.loop import Trainer, TrainingDiverged
from trainers.packing import pack_sparse, state_bytes

log = logging.getLogger(__name__)


def read_best(path: str, index: int = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(train config mapping, provenance)`` from a `compsweep best` file, or
    ``(mapping, None)`` from a plain training config."""
    data = read_mapping(path, "training config", TrainConfig.model_fields)
    if "configs" not in data:
        return data, None
    configs = data["configs"]
    if not isinstance(configs, list) or not all(
        isinstance(c, dict) and isinstance(c.get("config"), dict) for c in configs
    ):
        raise ConfigError(["configs: expected a list of {config, provenance} entries"], path)
    if not 0 <= index < len(configs):
        raise ConfigError(
            [f"--index {index}: {path} holds {len(configs)} config(s) (0..{len(configs) - 1})"],
            path,
        )
    prov = configs[index].get("provenance")
    if prov is not None and not (
        isinstance(prov, dict) and all(k in prov for k in ("sweep_id", "trial_id", "run_id"))
    ):
        raise ConfigError(
            [f"configs[{index}].provenance: expected sweep_id, trial_id and run_id (or null)"],
            path,
        )
    return configs[index]["config"], prov


class _TrackerSeries(Callback):
    """Per-step series of the final run, into its tracker (sent in the background)."""

    def __init__(self, tracker: FinalTracker) -> None:
        self.tracker = tracker

    def on_distortion(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step)

    def on_evaluation(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step)


# How long the final run's data may take to reach the store (through an outage) before the
# training is reported failed; a final training runs for minutes to hours, so be patient.
FLUSH_TIMEOUT_S = 600.0
FAILED_FLUSH_TIMEOUT_S = 60.0  # a failed or interrupted training: do not hold the user long


class TrackingUnavailable(RuntimeError):
    """The final run's data could not be delivered to the tracking store in time."""


def train_final(
    path: str,
    *,
    index: int = 0,
    overrides: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    register: str | None = None,
) -> dict[str, Any]:
    """Train the config in ``path``, log it as a ``final`` run, register the compressed model.

    A config from a `compsweep best` file trains on train + validation (``data.val_fraction``
    0) unless ``overrides`` set ``data.val_fraction``.

    Returns the last evaluation's and the final metrics (``test_accuracy`` among them), the
    source trial's ``source_val_accuracy`` (if known), ``run_id``, ``model_name`` and
    ``model_version``.

    Raises:
        TrainingDiverged: the training diverged (the run ends FAILED, tagged diverged).
    """
    data, prov = read_best(path, index)
    if prov:  # selection is done: the validation samples now train the final model
        set_dotted(data, "data.val_fraction", 0.0)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    cfg = parse_train_config(data, path)
    uri = tracking_uri or (prov or {}).get("tracking_uri") or default_tracking_uri()
    client = mlflow_client(uri)
    # Final runs get an experiment of their own, next to the sweep's: its charts compare trials.
    experiment_id = ensure_experiment(uri, final_experiment(client, prov))
    tags = {METHOD_TAG: cfg.compression.method}
    if prov:
        tags.update({
            SWEEP_ID_TAG: prov["sweep_id"],
            SOURCE_TRIAL_ID_TAG: str(prov["trial_id"]),
            SOURCE_RUN_ID_TAG: prov["run_id"],
        })  # fmt: skip
    tracker = FinalTracker(uri, experiment_id, final_run_name(client, prov, cfg), tags)
    try:
        # Fail fast on refused credentials; an unreachable server only delays the run.
        tracker.wait_ready(timeout=30.0)
        tracker.log_params(cfg.to_dict())
        trainer = Trainer(cfg, callbacks=[ConsoleProgress(), _TrackerSeries(tracker)])
        final = trainer.fit()
    except BaseException as e:
        if isinstance(e, TrainingDiverged):
            tracker.set_tags({STATUS_TAG: "diverged", STATUS_REASON_TAG: e.reason})
        tracker.close("FAILED", timeout=FAILED_FLUSH_TIMEOUT_S)
        raise
    try:
        out = _export_and_register(uri, tracker, trainer, final, cfg, prov, register)
    except BaseException:
        tracker.close("FAILED", timeout=FAILED_FLUSH_TIMEOUT_S)
        raise
    if not tracker.close("FINISHED", timeout=FLUSH_TIMEOUT_S):
        # Everything was delivered before the model was logged (which also ended the run):
        # only the final status update is missing.
        log.warning("final run %s: status not updated: %s", out["run_id"], tracker.last_error)
    return {**out, "tracking_uri": uri, "experiment_id": experiment_id}


def _export_and_register(
    uri: str,
    tracker: FinalTracker,
    trainer: Trainer,
    final: dict[str, float],
    cfg: TrainConfig,
    prov: dict[str, Any] | None,
    register: str | None,
) -> dict[str, Any]:
    """Export the trained model, log its sizes and config into the final run, log it as the
    run's ``model`` and register it; the summary, ``run_id``, ``model_name`` and
    ``model_version``."""
    # MLflow's model flavours take seconds to import: only when a final run logs its model.
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model = trainer.model
    if trainer.distortion is not None:
        model = export(trainer.model, trainer.distortion, list(trainer.targets))
    # What users get: pruned layers stored as a bit mask and the kept values, behind the
    # dataset's raw-input adapter.
    served, example, code_paths = servable_model(pack_sparse(model).cpu(), trainer)
    # Sizes against the dense model the run started from (for funnel, before it was
    # decomposed): weights as counted by the method, bytes as really stored (the served
    # model's tensors; the dense model would carry the same buffers and adapter).
    exported_params = float(count_params(model))
    bytes_stored = float(state_bytes(served))
    unpacked = state_bytes(with_raw_input(model, trainer.info.raw, trainer.info.input_shape))
    width = next(model.parameters()).element_size()
    bytes_dense = unpacked + (final["params_dense"] - exported_params) * width
    summary = {
        **final,
        "exported_params": exported_params,
        "exported_macs": float(
            count_macs(model, trainer.info.input_shape, trainer.info.input_dtype)
        ),
        "bytes_dense": float(bytes_dense),
        "bytes_stored": bytes_stored,
        "compression_ratio_bytes": bytes_dense / bytes_stored,
    }
    # The last evaluation (test_accuracy, ...) is in the series already; these are the rest.
    tracker.log_metrics(summary, step=trainer.step)
    summary = {**trainer.last_eval, **summary}
    source_val = ((prov or {}).get("metrics") or {}).get("val_accuracy")
    if source_val is not None:
        summary["source_val_accuracy"] = float(source_val)
    with tempfile.TemporaryDirectory() as d:
        cfg_path = Path(d) / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        tracker.log_artifact(str(cfg_path))  # copied into the spool: the directory may go
    # log_model below works on the run through MLflow's own API: the run must exist, and hold
    # everything logged so far, before it ends the run.
    if not tracker.flush(timeout=FLUSH_TIMEOUT_S, wait_while_down=True) or tracker.run_id is None:
        raise TrackingUnavailable(
            f"cannot log the final run to {redact(uri)} within {FLUSH_TIMEOUT_S:g}s: {tracker.last_error}"
        )
    run_id = tracker.run_id
    client = mlflow_client(uri)

    name = register or model_name(prov, cfg)
    signature = infer_signature(example, served(torch.from_numpy(example)).numpy())
    # log_model works on the active run of the global tracking URI, which MLflow also puts
    # into MLFLOW_TRACKING_URI: set it for this call only, and put back what was there.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id), library_prints("mlflow.registry"):
            info = mlflow.pytorch.log_model(
                served,
                name="model",
                registered_model_name=name,
                signature=signature,
                input_example=example,
                code_paths=code_paths,
                # pt2 (torch.export) loads without this package or pickled code; a model that
                # does not export is pickled, with the trainers package shipped alongside.
                serialization_format="pickle" if code_paths else "pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
    finally:
        mlflow.set_tracking_uri(previous)
    version = str(info.registered_model_version)
    tags = {
        "test_accuracy": summary.get("test_accuracy"),
        "compression_ratio_weights": summary["compression_ratio"],
        "weights_kept": summary["params"],
        "weights_dense": summary["params_dense"],
        "compression_ratio_bytes": summary["compression_ratio_bytes"],
        "bytes_stored": summary["bytes_stored"],
        "bytes_dense": summary["bytes_dense"],
        "macs": summary["macs"],
        "source_val_accuracy": summary.get("source_val_accuracy"),
        "source_run_id": (prov or {}).get("run_id"),
        "input_format": trainer.info.raw.description if trainer.info.raw else "as trained",
    }
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=_VERSION_NOTE)
    return {**summary, "run_id": run_id, "model_name": name, "model_version": version}


def final_experiment(client: Any, prov: dict[str, Any] | None) -> str:
    """``<sweep experiment>-final``; ``compsweep-final`` without a sweep."""
    if not prov:
        return "compsweep-final"
    try:
        name = client.get_experiment(prov["experiment_id"]).name
    except Exception:  # the sweep's experiment is gone: name it after the sweep
        name = sweep_name(prov["sweep_id"])
    return f"{name}-final"


def final_run_name(client: Any, prov: dict[str, Any] | None, cfg: Any) -> str:
    """``final · prune r=0.90 pnr=7 · t04``: the source trial's run name, or what it trains."""
    if prov:
        try:
            return f"final · {client.get_run(prov['run_id']).info.run_name}"
        except Exception:  # the trial's run is gone
            return f"final · {cfg.compression.method} · {prov['trial_id']}"
    return f"final · {cfg.compression.method} · {cfg.model.name}"


_VERSION_NOTE = (
    "Takes the dataset's raw samples (see the input_format tag and the signature): the "
    "training's standardization is built in. compression_ratio_weights = weights_dense / "
    "weights_kept (weights the compression keeps: non-zeros, or the factors' entries); "
    "compression_ratio_bytes = bytes_dense / bytes_stored (bytes of this model's tensors, pruned "
    "layers stored as a bit mask plus the kept values, against the dense float model)."
)


def servable_model(model: Any, trainer: Any) -> tuple[Any, Any, list[str] | None]:
    """``(module, raw input example, code_paths)`` for MLflow: ``model`` behind the dataset's
    raw-input adapter, in eval mode. ``code_paths`` is None when the module exports with
    ``torch.export`` (MLflow's pt2 format: it loads as plain torch, no compsweep needed),
    else the ``trainers`` package to ship with a pickled module."""

    info = trainer.info
    served = with_raw_input(model, info.raw, info.input_shape).eval().requires_grad_(False)
    x = next(iter(trainer.data.test.epoch(0, trainer.cfg.run.seed)))[0][:5].cpu()
    example = to_raw(x, info.raw) if info.raw else x.numpy()
    try:
        torch.export.export(served, (torch.from_numpy(example),))
    except Exception:  # untraceable control flow: the original classes travel with the model
        return served, example, [str(Path(trainers.__file__).parent)]
    return served, example, None


def model_name(prov: dict[str, Any] | None, cfg: Any) -> str:
    """``<sweep name>-<method>`` (``<model>-<method>`` without a sweep): the registered name."""
    base = sweep_name(prov["sweep_id"]) if prov else cfg.model.name
    return f"{base}-{cfg.compression.method}"
