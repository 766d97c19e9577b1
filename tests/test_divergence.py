"""A run whose loss or weights become non-finite stops with TrainingDiverged, saying what, at
which step, and what to change; `compsweep train` prints it as one line and exits 1."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from trainers.callbacks import Callback
from trainers.loop import Trainer, TrainingDiverged


class PoisonAfterStep(Callback):
    """Writes NaN into one parameter right after optimizer step ``step`` (from the trainer's
    step hook), so the next check sees it."""

    def __init__(self, trainer: Trainer, step: int, name: str) -> None:
        param = dict(trainer.model.named_parameters())[name]
        real_step = trainer._train_step

        def train_step(x, y):
            real_step(x, y)
            if trainer.step + 1 == step:  # trainer.step counts this step right after the call
                with torch.no_grad():
                    param.view(-1)[0] = math.nan

        trainer._train_step = train_step


class Recorder(Callback):
    def __init__(self) -> None:
        self.distortion_steps: list[int] = []
        self.evaluation_steps: list[int] = []

    def on_distortion(self, trainer, step, metrics):
        assert all(math.isfinite(v) for v in metrics.values())  # nothing non-finite is reported
        self.distortion_steps.append(step)

    def on_evaluation(self, trainer, step, metrics):
        self.evaluation_steps.append(step)


def test_nan_training_loss_stops_at_the_next_event(tiny_config):
    rec = Recorder()
    t = Trainer(tiny_config(compression={"pnr": 3}, run={"steps": 30}), [rec])
    # a NaN weight after step 4 makes the loss of step 5 NaN; the event at step 6 sees it
    PoisonAfterStep(t, 4, "fc.weight")
    with pytest.raises(TrainingDiverged) as e:
        t.fit()
    assert e.value.step == 6
    assert e.value.reason == "non-finite training loss (nan) at step 6; lower optim.lr"
    assert str(e.value) == f"training diverged: {e.value.reason}"
    assert rec.distortion_steps == [3]  # the event at step 6 reported nothing


def test_nan_weights_stop_at_the_next_evaluation(tiny_config):
    # Plain training, evaluated every 4 steps: the weight turns NaN after step 4's loss was
    # computed, so the training loss is still finite and the weights give it away.
    t = Trainer(tiny_config(compression={"method": "none"}, run={"steps": 30}))
    PoisonAfterStep(t, 4, "conv1.weight")
    with pytest.raises(TrainingDiverged) as e:
        t.fit()
    assert e.value.step == 4
    assert e.value.reason == (
        "non-finite weights or statistics (conv1.weight) at step 4; lower optim.lr"
    )


def test_a_distortion_that_makes_weights_nan_is_named(tiny_config, monkeypatch):
    t = Trainer(tiny_config(compression={"pnr": 3}, run={"steps": 30}))
    real_apply = t.distortion.apply

    def apply(weights, ctx):
        out = real_apply(weights, ctx)
        if ctx.step == 9:
            name = next(iter(out))
            out[name] = torch.full_like(out[name], math.nan)
        return out

    monkeypatch.setattr(t.distortion, "apply", apply)
    with pytest.raises(TrainingDiverged) as e:
        t.fit()
    assert e.value.step == 9
    assert e.value.reason.startswith("the prune distortion at step 9 left non-finite weights")
    assert "check compression.params" in e.value.reason


def test_an_absurd_learning_rate_diverges_early(tiny_config):
    t = Trainer(tiny_config(optim={"lr": 1e6}, run={"steps": 60}))
    with pytest.raises(TrainingDiverged, match="lower optim.lr") as e:
        t.fit()
    assert e.value.step < 20 and f"at step {e.value.step}" in e.value.reason


def test_a_healthy_run_is_unaffected(tiny_config):
    t = Trainer(tiny_config(run={"steps": 30}))
    assert t.fit()["steps"] == 30


def test_compsweep_train_prints_divergence_as_one_line_and_exits_1(tmp_path, capsys):
    from sweeps.cli import main

    config = {
        "data": {"name": "synthetic", "batch_size": 16, "options": {"n_train": 144, "n_test": 32}},
        "model": {"name": "small_cnn"},
        "optim": {"lr": 1e6},
        "compression": {
            "method": "prune",
            "pnr": 3,
            "params": {"rate": 0.5},
            "targets": {"min_params": 10},
        },  # fmt: skip
        "run": {"steps": 60, "device": "cpu", "eval_every": 0.5},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training diverged: ")
    assert "lower optim.lr" in err[0]
