"""The pNR training loop: event count, ending on a distortion, metrics, exact resume (every
method's bit-exact resume: tests/test_methods_registry.py)."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.callbacks import Callback
from trainers.config import ConfigError, parse_train_config
from trainers.loop import Trainer, _flushing_subnormals


class Recorder(Callback):
    def __init__(self, stop_at_step: int | None = None):
        self.distortions: list[tuple[int, dict]] = []
        self.evaluations: list[tuple[int, dict]] = []
        self.final: dict | None = None
        self.stop_at_step = stop_at_step

    def on_distortion(self, trainer, step, metrics):
        self.distortions.append((step, metrics))

    def on_evaluation(self, trainer, step, metrics):
        self.evaluations.append((step, metrics))
        if self.stop_at_step is not None and step >= self.stop_at_step:
            trainer.request_stop()

    def on_train_end(self, trainer, metrics):
        self.final = metrics


@pytest.mark.parametrize("steps,pnr", [(20, 3), (20, 1), (20, 7), (21, 7), (5, 5)])
def test_exactly_floor_steps_over_pnr_distortions_and_ends_on_one(tiny_config, steps, pnr):
    rec = Recorder()
    t = Trainer(tiny_config(run={"steps": steps}, compression={"pnr": pnr}), [rec])
    final = t.fit()
    events = steps // pnr
    assert len(rec.distortions) == events
    assert [s for s, _ in rec.distortions] == [pnr * (k + 1) for k in range(events)]
    assert t.step == events * pnr == rec.distortions[-1][0]  # the last step is a distortion
    # the run's result is the validation accuracy right after the last event's distortion
    assert rec.evaluations[-1][0] == t.step
    assert t.last_eval == rec.evaluations[-1][1] and "val_accuracy" in t.last_eval
    assert "accuracy" not in final and "val_accuracy" not in final
    assert final["num_distortions"] == events


def test_final_weights_are_exactly_compressed(tiny_config):
    t = Trainer(tiny_config(compression={"params": {"rate": 0.5}}))
    t.fit()
    for name, p in t.targets.items():
        assert int((p == 0).sum()) == round(0.5 * p.numel()), name


class FlushProbe(Callback):
    def __init__(self):
        self.seen: list[bool] = []

    def on_distortion(self, trainer, step, metrics):
        self.seen.append(_flushing_subnormals())


@pytest.mark.parametrize("flush", [True, False])
def test_subnormals_are_flushed_during_fit_only(tiny_config, flush):
    probe = FlushProbe()
    t = Trainer(tiny_config(run={"flush_subnormals": flush}), [probe])
    assert not _flushing_subnormals()
    t.fit()
    assert probe.seen and set(probe.seen) == {flush}
    assert not _flushing_subnormals()  # restored: the process is not left changed


def test_pnr_larger_than_run_is_a_config_error(tiny_config):
    with pytest.raises(ConfigError, match="compression.pnr: 50 exceeds the run's 20 steps"):
        Trainer(tiny_config(compression={"pnr": 50}))


def test_metrics_follow_their_definitions(tiny_config):
    """e_w, delta_w and ΔL/L as the metric catalogue defines them, checked by hand."""
    t = Trainer(
        tiny_config(
            compression={"method": "weight_decay", "params": {"theta": 0.2}, "pnr": 4},
            run={"measure_every": 1},
        )
    )

    seen = {}

    class Check(Callback):
        def on_distortion(self, trainer, step, metrics):
            # weights now hold w' = 0.8 w, so w - w' = 0.25 w'
            ws = torch.cat([p.detach().flatten() for p in trainer.targets.values()])
            diff = ws / 0.8 * 0.2
            seen["e_w"] = (diff.abs().mean().item(), metrics["e_w"])
            seen["delta_w"] = ((diff**2).sum().item() / diff.numel(), metrics["delta_w"])
            seen["e_w_per_pnr"] = (metrics["e_w"] / 4, metrics["e_w_per_pnr"])
            seen["ratio"] = (
                (metrics["loss_post"] - metrics["loss_pre"]) / metrics["loss_pre"],
                metrics["delta_loss_ratio"],
            )
            seen["loss_post"] = (trainer._probe_loss().item(), metrics["loss_post"])

    t.callbacks.append(Check())
    t.fit()
    for key, (expected, got) in seen.items():
        assert got == pytest.approx(expected, rel=1e-5), key


def test_probe_losses_are_measured_every_kth_event_and_at_evaluations(tiny_config):
    """e_w is exact at every event; the probe losses at every measure_every-th event (counted
    from the first) and at each evaluation's event, so the series say which were measured."""
    rec = Recorder()
    cfg = tiny_config(
        run={"steps": 40, "eval_every": 1.0, "measure_every": 4}, compression={"pnr": 3}
    )
    Trainer(cfg, [rec]).fit()
    evaluated = {s for s, _ in rec.evaluations}
    assert all({"e_w", "e_w_per_pnr", "delta_w"} <= m.keys() for _, m in rec.distortions)
    measured = [i for i, (_, m) in enumerate(rec.distortions) if "loss_pre" in m]
    expected = [i for i, (s, _) in enumerate(rec.distortions) if i % 4 == 0 or s in evaluated]
    assert measured == expected and len(measured) < len(rec.distortions)
    assert all(
        {"loss_post", "delta_loss_ratio"} <= m.keys()
        for i, (_, m) in enumerate(rec.distortions)
        if i in measured
    )


@pytest.mark.parametrize(
    "probe,batch,pnr,budget,k", [(50, 50, 1, 0.02, 34), (50, 50, 10, 0.02, 4), (50, 50, 100, 0.02, 1),
                                 (25, 50, 1, 0.1, 4), (3, 3, 1, 1.0, 1)],
)  # fmt: skip
def test_default_measure_interval_keeps_the_cost_within_budget(probe, batch, pnr, budget, k):
    from trainers.loop import auto_measure_every

    assert auto_measure_every(probe, batch, pnr, budget) == k
    # the cost model: two probe forwards per measurement vs three forwards per training step
    assert 2 * probe / (3 * batch) / (k * pnr) <= budget + 1e-12


@pytest.mark.parametrize(
    "run,field", [({"measure_every": 0}, "run.measure_every"), ({"measure_budget": 0}, "run.measure_budget"),
                  ({"measure_budget": 1.5}, "run.measure_budget")],
)  # fmt: skip
def test_bad_measurement_settings_are_config_errors(tiny_config, run, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config(run=run)


def test_probe_loss_changes_nothing(tiny_config):
    t = Trainer(tiny_config())
    bn = next(m for m in t.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone(), bn.num_batches_tracked.clone(), torch.get_rng_state()
    t._probe_loss()
    assert torch.equal(bn.running_mean, before[0])
    assert torch.equal(bn.num_batches_tracked, before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    assert bn.momentum == 0.1 and t.model.training


def test_evaluations_happen_at_distortion_steps(tiny_config):
    rec = Recorder()
    t = Trainer(tiny_config(run={"steps": 40, "eval_every": 1.0}, compression={"pnr": 3}), [rec])
    t.fit()  # 8 batches/epoch: evaluations at the first events at/after steps 8, 16, 24, 32 and at the end
    distortion_steps = {s for s, _ in rec.distortions}
    assert [s for s, _ in rec.evaluations] == [9, 18, 24, 33, 39]
    assert all(s in distortion_steps for s, _ in rec.evaluations)
    names = {"epoch", "train_loss", "val_acc_pre", "val_accuracy", "val_loss", "test_accuracy",
             "test_loss"}  # fmt: skip
    assert all(m.keys() == names for _, m in rec.evaluations)


def test_bn_reestimation_changes_running_stats(tiny_config):
    t = Trainer(tiny_config(run={"bn_reestimate": 2}))
    bn = next(m for m in t.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_var.clone()
    t.reestimate_bn(2)
    assert not torch.allclose(before, bn.running_var)
    t.fit()
    assert 0 <= t.last_eval["val_accuracy"] <= 1


def test_final_metrics_count_compression(tiny_config):
    t = Trainer(tiny_config(compression={"params": {"rate": 0.75}}))
    final = t.fit()
    target = sum(p.numel() for p in t.targets.values())
    assert final["params_dense"] - final["params"] == pytest.approx(
        round(0.75 * target), abs=len(t.targets)
    )
    assert final["compression_ratio"] == pytest.approx(final["params_dense"] / final["params"])
    assert final["macs"] < final["macs_dense"]
    assert math.isfinite(final["mean_e_w"]) and final["mean_e_w_per_pnr"] == final["mean_e_w"] / 3


def test_plain_training_without_distortion(tiny_config):
    rec = Recorder()
    t = Trainer(tiny_config(compression={"method": "none"}, run={"steps": 17}), [rec])
    final = t.fit()
    assert t.step == 17 and not rec.distortions
    assert final["compression_ratio"] == 1.0
    # no distortion, so no "before the distortion" accuracy
    assert "val_acc_pre" not in t.last_eval and t.last_eval == rec.evaluations[-1][1]


def test_config_errors_are_listed_together():
    with pytest.raises(ConfigError) as e:
        parse_train_config(
            {
                "data": {"name": "digitz", "batch_size": 0},
                "optim": {"lr": -1, "lrr": 2},
                "compression": {"method": "prune", "pnr": 0, "params": {"rate": 2.0}},
                "run": {},
            }
        )
    text = str(e.value)
    assert "optim.lrr: unknown field (did you mean 'lr'?)" in text
    e2 = pytest.raises(
        ConfigError,
        parse_train_config,
        {
            "data": {"name": "digitz", "batch_size": 0},
            "optim": {"lr": -1},
            "compression": {"method": "prune", "pnr": 0, "params": {"rate": 2.0}},
            "run": {},
        },
    )
    msg = str(e2.value)
    for field in (
        "data.name",
        "data.batch_size",
        "optim.lr",
        "compression.pnr",
        "compression.params",
        "run:",
    ):
        assert field in msg, field


def test_type_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"compression.pnr: expected int, got 'ten'"):
        parse_train_config({"compression": {"pnr": "ten"}, "run": {"steps": 1}})


def test_resume_restores_the_dropout_rng_of_a_language_model(tiny_config, tmp_path):
    """An LSTM LM with dropout draws from torch's global RNG: the checkpoint must carry it."""
    cfg = tiny_config(
        data={
            "name": "synthetic_text",
            "batch_size": 16,
            "options": {"vocab_size": 20, "seq_len": 8, "n_train": 64, "n_test": 16},
        },
        model={"name": "lstm_lm", "options": {"hidden": 16, "dropout": 0.3}},
        compression={"method": "prune", "params": {"rate": 0.5}, "pnr": 2},
        run={"steps": 12, "eval_every": 1.0},
    )
    full = Trainer(cfg)
    full.fit()
    first = Trainer(cfg, [Recorder(stop_at_step=4)])
    first.fit()
    first.save_checkpoint(str(tmp_path / "c.pt"))
    torch.manual_seed(99)
    resumed = Trainer(cfg)
    resumed.load_checkpoint(str(tmp_path / "c.pt"))
    resumed.fit()
    assert resumed.step == 12 and 4 <= first.step < 12
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_tucker2_targets_convs_by_default_and_linear_only_when_named():
    from trainers.config import TargetConfig
    from trainers.data import DataInfo
    from trainers.distortions import make_distortion
    from trainers.models import build_model
    from trainers.targets import select_targets

    model = build_model("lenet5", DataInfo((1, 28, 28), 10))
    tucker = make_distortion("tucker2", rc=0.5)
    assert list(select_targets(model, TargetConfig(), tucker)) == ["conv2.weight"]
    assert "fc1.weight" in select_targets(model, TargetConfig(), make_distortion("prune", rate=0.5))
    named = select_targets(model, TargetConfig(include=["conv2.weight", "fc1.weight"]), tucker)
    assert list(named) == ["conv2.weight", "fc1.weight"]


def test_e_w_counts_targets_a_distortion_leaves_untouched(tiny_config):
    """A distortion may hand a tensor back as it was: it adds nothing to e_w but its weights
    still count in the mean, as for any unchanged weight."""
    from trainers.distortions.weight_decay import WeightDecay

    class DecayFirstOnly(WeightDecay):
        def apply(self, weights, ctx):
            first = next(iter(weights))
            return {n: (w * 0.5 if n == first else w) for n, w in weights.items()}

    rec = Recorder()
    t = Trainer(
        tiny_config(compression={"method": "weight_decay", "params": {"theta": 0.5}}), [rec]
    )
    t.distortion = DecayFirstOnly(theta=0.5)
    first, *_ = t.targets.values()
    total = sum(p.numel() for p in t.targets.values())
    seen = []

    class Expect(Callback):
        def on_distortion(self, trainer, step, metrics):
            # the first target now holds w/2, so its |w - h(w)| sums to Σ|h(w)|
            seen.append((first.detach().abs().sum().item() / total, metrics["e_w"]))

    t.callbacks.append(Expect())
    t.fit()
    assert seen and all(got == pytest.approx(want, rel=1e-5) for want, got in seen)
