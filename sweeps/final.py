"""Final training of a sweep's winner: longer schedule, logged to MLflow as a ``final`` run
linked to its source trial, exported compressed, and registered in the Model Registry.

The winner was selected on validation data; its final training uses train + validation
(``data.val_fraction: 0``, unless overridden) and reports test metrics, which nothing selected
on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sweeps.quiet import library_prints
from trainers.callbacks import Callback, ConsoleProgress
from trainers.config import ConfigError, TrainConfig, parse_train_config, read_mapping, set_dotted
from trainers.loop import Trainer


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


class _MlflowSeries(Callback):
    """Per-step series of the final run, sent in one batch per evaluation."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.pending: list = []

    def _add(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), ts, step) for k, v in metrics.items()]

    def on_distortion(self, trainer, step, metrics):
        self._add(metrics, step)

    def on_evaluation(self, trainer, step, metrics):
        self._add(metrics, step)
        self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        self.pending = []


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
    import mlflow
    import mlflow.pytorch
    import torch

    from sweeps.tracking import (
        STATUS_REASON_TAG,
        STATUS_TAG,
        default_tracking_uri,
        ensure_experiment,
        mlflow_client,
    )
    from sweeps.trial import flatten
    from trainers.counting import count_params
    from trainers.export import export, model_macs
    from trainers.loop import TrainingDiverged

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
    tags = {"compsweep.role": "final", "compsweep.method": cfg.compression.method}
    if prov:
        tags.update({
            "compsweep.sweep_id": prov["sweep_id"],
            "compsweep.source_trial_id": str(prov["trial_id"]),
            "compsweep.source_run_id": prov["run_id"],
        })  # fmt: skip
    run = client.create_run(experiment_id, tags=tags, run_name=final_run_name(client, prov, cfg))
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in flatten(cfg.to_dict()).items()],
    )
    series = _MlflowSeries(client, run_id)
    trainer = Trainer(cfg, callbacks=[ConsoleProgress(), series])
    try:
        final = trainer.fit()
    except BaseException as e:
        series.flush()
        if isinstance(e, TrainingDiverged):
            client.set_tag(run_id, STATUS_TAG, "diverged")
            client.set_tag(run_id, STATUS_REASON_TAG, e.reason)
        client.set_terminated(run_id, "FAILED")
        raise
    series.flush()

    model = trainer.model
    if trainer.distortion is not None:
        model = export(trainer.model, trainer.distortion, list(trainer.targets))
    # Against the dense model the run started from (for funnel, before it was decomposed).
    exported_params = float(count_params(model))
    summary = {
        **final,
        "exported_params": exported_params,
        "exported_macs": float(
            model_macs(model, trainer.info.input_shape, trainer.info.input_dtype)
        ),
        "exported_compression_ratio": final["params_dense"] / exported_params,
    }
    # The last evaluation (test_accuracy, ...) is in the series already; these are the rest.
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, float(v), 0, trainer.step) for k, v in summary.items()],
    )
    summary = {**trainer.last_eval, **summary}
    source_val = ((prov or {}).get("metrics") or {}).get("val_accuracy")
    if source_val is not None:
        summary["source_val_accuracy"] = float(source_val)
    with tempfile.TemporaryDirectory() as d:
        cfg_path = Path(d) / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        client.log_artifact(run_id, str(cfg_path))

    name = register or _model_name(prov, cfg)
    model.eval()
    example = next(iter(trainer.data.test.epoch(0, cfg.run.seed)))[0][:2].cpu()
    # log_model works on the active run of the global tracking URI, which MLflow also puts
    # into MLFLOW_TRACKING_URI: set it for this call only, and put back what was there.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id), library_prints("mlflow.registry"):
            info = mlflow.pytorch.log_model(
                model.cpu(),
                name="model",
                registered_model_name=name,
                input_example=example.numpy(),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
    finally:
        mlflow.set_tracking_uri(previous)
    version = str(info.registered_model_version)
    for key in ("test_accuracy", "compression_ratio", "params", "macs", "source_val_accuracy"):
        if key in summary:
            client.set_model_version_tag(name, version, key, str(summary[key]))
    client.set_model_version_tag(
        name, version, "exported_compression_ratio", str(summary["exported_compression_ratio"])
    )
    if prov:
        client.set_model_version_tag(name, version, "source_run_id", prov["run_id"])
    client.set_terminated(run_id, "FINISHED")
    return {
        **summary,
        "run_id": run_id,
        "model_name": name,
        "model_version": version,
        "tracking_uri": uri,
        "experiment_id": experiment_id,
    }


def final_experiment(client: Any, prov: dict[str, Any] | None) -> str:
    """``<sweep experiment>-final``; ``compsweep-final`` without a sweep."""
    if not prov:
        return "compsweep-final"
    try:
        name = client.get_experiment(prov["experiment_id"]).name
    except Exception:  # the sweep's experiment is gone: name it after the sweep
        name = prov["sweep_id"].rsplit("-", 3)[0]
    return f"{name}-final"


def final_run_name(client: Any, prov: dict[str, Any] | None, cfg: Any) -> str:
    """``final · prune r=0.90 pnr=7 · t04``: the source trial's run name, or what it trains."""
    if prov:
        try:
            return f"final · {client.get_run(prov['run_id']).info.run_name}"
        except Exception:  # the trial's run is gone
            return f"final · {cfg.compression.method} · {prov['trial_id']}"
    return f"final · {cfg.compression.method} · {cfg.model.name}"


def _model_name(prov: dict[str, Any] | None, cfg: Any) -> str:
    base = prov["sweep_id"].rsplit("-", 2)[0] if prov else cfg.model.name
    return f"{base}-{cfg.compression.method}"
