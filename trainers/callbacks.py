"""The small interface through which a trainer reports: no Ray, no MLflow here.

Orchestration (``sweeps/``) implements these hooks to forward metrics to Ray Tune and MLflow;
tests implement them to record; the console callback prints progress.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from trainers.metrics import format_metrics

if TYPE_CHECKING:
    from trainers.loop import Trainer


class Callback:
    """Override the hooks you need. ``metrics`` use the names of :mod:`trainers.metrics`."""

    def on_train_start(self, trainer: Trainer, info: dict[str, Any]) -> None:
        """Once, before the first step (also on resume)."""

    def on_distortion(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After every distortion event: e_w, e_w_per_pnr, delta_w; at measured events (every
        ``run.measure_every``-th and each evaluation's) also loss_pre, loss_post and
        delta_loss_ratio."""

    def on_evaluation(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After every evaluation: epoch, train_loss, val_acc_pre (at a distortion event),
        val_accuracy and val_loss (with a validation split), test_accuracy, test_loss.

        The trainer's state is consistent here, so this is the place to checkpoint.
        """

    def on_phase(
        self, trainer: Trainer, phase: str, metrics: dict[str, float], details: dict[str, Any]
    ) -> None:
        """After each phase of a phase-structured method (``funnel``: "decompose", "train",
        "compress", "finetune"): val_accuracy (with a validation split), test_accuracy,
        params, macs and the method's own scalars (e.g.
        pruning_ratio); ``details`` is a small JSON-able mapping (e.g. gate histograms per
        layer). The scalars also reach ``on_train_end`` as ``<phase>_<name>``."""

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Once, with the final metrics (compression_ratio, params, macs, mean_e_w, ...); the
        accuracies are the last evaluation's, ``trainer.last_eval``."""


class ConsoleProgress(Callback):
    """One line per evaluation and a summary at the end."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._t0 = time.perf_counter()
        self._last_distortion: dict[str, float] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_train_start(self, trainer: Trainer, info: dict[str, Any]) -> None:
        self._t0 = time.perf_counter()
        if "phase_end" in info:
            self._print(
                f"{info['model']} on {info['dataset']}: {info['method']}, {info['total_steps']} "
                f"steps ({info['steps_per_epoch']}/epoch): regularized to step "
                f"{info['phase_end']}, then compressed and fine-tuned; "
                f"{len(info['targets'])} target tensors"
            )
            return
        self._print(
            f"{info['model']} on {info['dataset']}: {info['total_steps']} steps "
            f"({info['steps_per_epoch']}/epoch), {info['method']} every pNR={info['pnr']} steps "
            f"-> {info['num_events']} distortion events on {len(info['targets'])} target tensors"
        )

    def on_distortion(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self._last_distortion = metrics

    def on_evaluation(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        d = self._last_distortion
        extra = f"  e_w {d['e_w']:.2e}" if d else ""
        if "delta_loss_ratio" in d:  # measured at every evaluation's event
            extra += f"  dL/L {d['delta_loss_ratio']:+.3f}"
        shown = ("train_loss", "val_acc_pre", "val_accuracy", "test_accuracy")
        self._print(
            f"epoch {metrics['epoch']:6.2f}  step {step:>6}/{trainer.total_steps}  "
            + format_metrics(metrics, shown, sep="  ")
            + f"{extra}  [{time.perf_counter() - self._t0:.1f}s]"
        )

    def on_phase(
        self, trainer: Trainer, phase: str, metrics: dict[str, float], details: dict[str, Any]
    ) -> None:
        self._print(
            f"phase {phase}: "
            + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            + f"  [{time.perf_counter() - self._t0:.1f}s]"
        )

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        accuracies = format_metrics(trainer.last_eval, ("val_accuracy", "test_accuracy"), "  ")
        self._print(
            f"final: {accuracies}  "
            + "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
            )
        )
