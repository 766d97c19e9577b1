"""Funnel-regularized Tucker-2: penalty, C-schedules, gating, prune / fold / keep-or-revert, and
the trainer's phases (decompose, train, compress, fine-tune), resume across them included."""

from __future__ import annotations

import pytest
import torch
from resume_check import assert_resume_is_exact
from torch import nn
from torch.nn.utils import parametrize

from trainers.callbacks import Callback
from trainers.config import ConfigError, parse_train_config
from trainers.distortions.funnel import Funnel, c_value, funnel, l1, l2
from trainers.distortions.gated_tucker2 import (
    compress_gated,
    decompose_gated,
    dense_macs,
    gate_params,
    layer_gates,
    tucker_macs,
)
from trainers.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grad_of(fn, x: torch.Tensor, c: float) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    fn(x, c).sum().backward()
    return x.grad


# ------------------------------------------------------------------------------------------
# f_C and the C-schedules


def test_funnel_value_and_gradient_follow_the_formula():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.01, 2.0, 50.0], dtype=torch.float64)
    c = 0.7
    torch.testing.assert_close(funnel(x, c), c * x.abs() / (c + x.abs()))
    expected = torch.sign(x) * c**2 / (c + x.abs()) ** 2
    torch.testing.assert_close(grad_of(funnel, x, c), expected)


def test_funnel_is_l1_like_for_large_c_and_vanishes_far_beyond_c():
    x = torch.tensor([-2.0, -0.3, 0.05, 1.0, 4.0], dtype=torch.float64)
    # C ≫ |x|: the slope is sign(x), like L1 (and the value ≈ |x|)
    torch.testing.assert_close(grad_of(funnel, x, 1e6), grad_of(l1, x, 0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(funnel(x, 1e6), x.abs(), atol=1e-4, rtol=0)
    # |x| ≫ C: the push vanishes (≈ C²/x²), while gates below C still feel a slope near 1
    far = torch.tensor([1.0, 10.0, -100.0], dtype=torch.float64)
    assert grad_of(funnel, far, 0.01).abs().max() < 1e-4
    assert grad_of(funnel, torch.tensor([1e-4], dtype=torch.float64), 0.01).item() > 0.98


def test_l1_and_l2_gradients():
    x = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(grad_of(l1, x, 1.0), torch.sign(x))
    torch.testing.assert_close(grad_of(l2, x, 1.0), 2 * x)


@pytest.mark.parametrize(
    "kind,knobs,expected",
    [
        ("constant", {"c0": 0.3}, {0: 0.3, 5: 0.3, 100: 0.3}),
        # C_e = C_0 − (C_0 − C_T)·e/E, E = 10, then C_T
        ("linear", {"c0": 1.0, "c_final": 0.1, "decay_epochs": 10}, {0: 1.0, 5: 0.55, 10: 0.1, 20: 0.1}),
        # ×γ every k = 2 epochs
        ("exp", {"c0": 1.0, "gamma": 0.5, "every": 2}, {0: 1.0, 1: 1.0, 2: 0.5, 3: 0.5, 4: 0.25, 9: 0.0625}),
        # ... never below C_T when given
        ("exp", {"c0": 1.0, "gamma": 0.5, "every": 2, "c_final": 0.3}, {2: 0.5, 4: 0.3, 9: 0.3}),
    ],
)  # fmt: skip
def test_c_schedule_values(kind, knobs, expected):
    for epoch, c in expected.items():
        assert c_value(kind, epoch, **knobs) == pytest.approx(c), epoch


def test_linear_decay_spans_the_regularized_phase_by_default():
    f = Funnel(c_schedule="linear", c0=2.0, c_final=0.2)
    f._phase_epochs = 4.0  # what prepare() sets from the run's length
    assert [f.c_at(e) for e in range(6)] == pytest.approx([2.0, 1.55, 1.1, 0.65, 0.2, 0.2])
    assert Funnel(c_schedule="linear", c0=2.0, c_final=0.2, decay_epochs=2).c_at(1) == 1.1


def test_bad_knobs_are_config_errors_naming_the_fix():
    def problems(params):
        with pytest.raises(ConfigError) as e:
            parse_train_config(
                {"compression": {"method": "funnel", "params": params}, "run": {"steps": 5}}
            )
        return str(e.value)

    assert "penalty must be one of funnel, l1, l2" in problems({"penalty": "l3"})
    assert "c_schedule must be one of constant, linear, exp" in problems({"c_schedule": "cos"})
    assert "the linear C-schedule needs c_final" in problems({"c_final": None})
    assert "c_every must be an integer >= 1" in problems({"c_schedule": "exp", "c_every": 0})
    assert "its knobs are: lam, penalty" in problems({"lambda": 0.1})


# ------------------------------------------------------------------------------------------
# Decomposition, gates, pruning, keep-or-revert


def conv(s=8, t=16, k=3, **kw) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(s, t, k, **kw).double()


def test_full_rank_gated_decomposition_is_exact_and_gates_start_at_the_factor_norms():
    layer = conv(6, 10, 3, stride=2, padding=1)
    seq = decompose_gated(layer)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(seq(x), layer(x))
    assert [type(m).__name__ for m in seq] == ["ParametrizedConv2d"] * 3
    assert [m.weight.shape[:2] for m in seq] == [(6, 6), (10, 6), (10, 10)]
    g_s, g_c, g_t = layer_gates(seq)
    # HOSVD factors are orthonormal (gates 1); the core's channel norms are the mode-T
    # singular values of the kernel
    torch.testing.assert_close(g_s, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(g_t, torch.ones(10, dtype=torch.float64))
    sv = torch.linalg.svdvals(layer.weight.detach().reshape(10, -1))
    torch.testing.assert_close(g_c.sort(descending=True).values, sv)


def test_linear_layers_decompose_as_1x1_kernels():
    torch.manual_seed(0)
    layer = nn.Linear(12, 5).double()
    seq = decompose_gated(layer)
    x = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close(seq(x), layer(x))
    assert [m.weight.shape for m in seq] == [(5, 12), (5, 5), (5, 5)]  # ranks capped at 5


def set_gates(seq: nn.Sequential, s: dict[int, float], t: dict[int, float]) -> None:
    g_s, g_c, _ = gate_params(seq)
    with torch.no_grad():
        for i, v in s.items():
            g_s.view(-1)[i] = v
        for i, v in t.items():
            g_c.view(-1)[i] = v


@pytest.mark.parametrize("threshold", [0.0, 1e-3])
def test_fold_back_leaves_outputs_unchanged_when_no_gate_is_below_threshold(threshold):
    layer = conv(8, 16, 3, padding=1)
    seq = decompose_gated(layer)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        before = seq(x)
    new, summary = compress_gated(seq, threshold, 36, 36)
    # full rank costs more than the dense conv: folded back into one Conv2d with the same output
    assert isinstance(new, nn.Conv2d) and not parametrize.is_parametrized(new)
    assert not summary["decomposed"] and summary["ranks_kept"] == summary["ranks_full"] == [8, 16]
    assert (new.stride, new.padding, new.bias is not None) == ((1, 1), (1, 1), True)
    with torch.no_grad():
        torch.testing.assert_close(new(x), before)


def test_pruning_gates_that_are_exactly_zero_keeps_outputs_and_the_decomposition():
    layer = conv(8, 16, 3, padding=1)
    seq = decompose_gated(layer)
    set_gates(seq, {i: 0.0 for i in range(3, 8)}, {i: 0.0 for i in range(4, 16)})  # all above: 1
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        before = seq(x)
    new, summary = compress_gated(seq, 0.01, 36, 36)
    assert summary["decomposed"] and summary["ranks_kept"] == [3, 4]
    assert isinstance(new, nn.Sequential) and [m.weight.shape[:2] for m in new] == [
        (3, 8),
        (4, 3),
        (16, 4),
    ]
    assert not any(parametrize.is_parametrized(m) for m in new)  # gates folded in
    with torch.no_grad():
        torch.testing.assert_close(new(x), before)


def test_keep_or_revert_compares_macs():
    """conv 8→16, 3×3, 16 positions in and out: dense = 16·8·16·9 = 18432 MACs."""
    assert dense_macs(8, 16, 9, 16, 16) == 18432
    cases = {  # (kept R_s, kept R_t) -> stays decomposed?
        (2, 4): True,  # 16·8·2 + 16·(2·4·9 + 4·16) = 2432 < 18432
        (8, 12): True,  # 1024 + 16·(864 + 192) = 17920 < 18432
        (8, 13): False,  # 1024 + 16·(936 + 208) = 19328 ≥ 18432: fold back
    }
    for (r_s, r_t), keep in cases.items():
        seq = decompose_gated(conv(8, 16, 3, padding=1))
        set_gates(seq, {i: 0.001 for i in range(r_s, 8)}, {i: 0.001 for i in range(r_t, 16)})
        new, summary = compress_gated(seq, 0.01, 16, 16)
        assert summary["ranks_kept"] == [r_s, r_t]
        assert summary["macs_decomposed"] == tucker_macs(8, 16, 9, r_s, r_t, 16, 16)
        assert summary["decomposed"] is keep, (r_s, r_t)
        assert isinstance(new, nn.Sequential if keep else nn.Conv2d)


def test_strided_conv_counts_the_first_factor_at_the_input_resolution():
    # 64 input positions, 16 output positions (stride 2): the 1×1 S→R_s runs on 64
    assert tucker_macs(8, 16, 9, 2, 4, 64, 16) == 64 * 8 * 2 + 16 * (2 * 4 * 9 + 4 * 16)


def test_one_factor_per_mode_always_stays():
    seq = decompose_gated(conv(4, 6, 3))
    set_gates(seq, {i: 1e-5 for i in range(4)}, {i: 1e-5 for i in range(6)})
    with torch.no_grad():
        gate_params(seq)[0].view(-1)[2] = 2e-5
    _, summary = compress_gated(seq, 0.01, 16, 16)
    assert summary["ranks_kept"] == [1, 1]


# ------------------------------------------------------------------------------------------
# The trainer's phases


class Phases(Callback):
    def __init__(self, stop_at_step: int | None = None):
        self.phases: list[tuple[str, dict, dict]] = []
        self.evaluations: list[tuple[int, dict]] = []
        self.stop_at_step = stop_at_step

    def on_phase(self, trainer, phase, metrics, details):
        self.phases.append((phase, metrics, details))

    def on_evaluation(self, trainer, step, metrics):
        self.evaluations.append((step, metrics))
        if self.stop_at_step is not None and step >= self.stop_at_step:
            trainer.request_stop()


def funnel_config(tiny_config, **params):
    knobs = {"lam": 0.05, "threshold": 0.4, "c0": 2.0, "c_final": 0.5, "finetune_epochs": 1.0}
    return tiny_config(
        compression={"method": "funnel", "params": {**knobs, **params}},
        run={"steps": 16, "eval_every": 0.5},
        optim={"lr": 0.05, "momentum": 0.9},
    )


def test_trainer_runs_the_four_phases_and_reports_the_finetuned_model(tiny_config):
    rec = Phases()
    t = Trainer(funnel_config(tiny_config), [rec])
    assert t.phase_end == 16 and t.total_steps == 16 + 8  # 8 steps per epoch of fine-tuning
    final = t.fit()
    assert [p for p, _, _ in rec.phases] == ["decompose", "train", "compress", "finetune"]
    m = {p: metrics for p, metrics, _ in rec.phases}
    assert {"val_accuracy", "test_accuracy", "params", "macs"} <= m["decompose"].keys()
    assert 0 < m["train"]["pruning_ratio"] < 1  # λ pushed some gates below the threshold
    details = {p: d for p, _, d in rec.phases}
    hist = details["train"]["histograms"]["conv2"]
    assert sum(hist["g_s"]) == 8 and sum(hist["g_core"]) == sum(hist["g_t"]) == 16
    assert details["compress"]["layers"]["conv2"]["decomposed"]
    # the compressed model is plain (gates folded), and it is what accuracy/params measure
    assert not any(parametrize.is_parametrized(mod) for mod in t.model.modules())
    last = rec.evaluations[-1][1]
    assert t.last_eval == last and last["val_accuracy"] == m["finetune"]["val_accuracy"]
    assert final["finetune_val_accuracy"] == last["val_accuracy"]
    assert final["finetune_test_accuracy"] == last["test_accuracy"]
    assert final["params"] == m["compress"]["params"] < final["params_dense"]
    assert final["macs"] < final["macs_dense"]
    assert final["compression_ratio"] == pytest.approx(final["params_dense"] / final["params"])
    assert final["compress_pruning_ratio"] == m["compress"]["pruning_ratio"]
    assert final["steps"] == 24


def test_no_regularization_and_zero_threshold_prunes_nothing(tiny_config):
    t = Trainer(funnel_config(tiny_config, lam=0.0, threshold=0.0, finetune_epochs=0))
    final = t.fit()
    assert t.total_steps == 16 and final["compress_pruning_ratio"] == 0
    assert list(t.targets) == ["conv2.weight"]  # by default convs only (fc is not a target)
    assert final["compress_layers_reverted"] == 1  # full rank never pays: folded back
    assert final["params"] == final["params_dense"]


@pytest.mark.parametrize("stop_at", [8, 20])  # inside the regularized phase / the fine-tuning
def test_resume_reproduces_the_uninterrupted_run(tiny_config, tmp_path, stop_at):
    assert_resume_is_exact(funnel_config(tiny_config), tmp_path, stop_at)


def test_starts_from_a_pretrained_checkpoint(tiny_config, tmp_path):
    plain = Trainer(tiny_config(compression={"method": "none"}, run={"steps": 16}))
    plain.fit()
    path = tmp_path / "dense.pt"
    plain.save_checkpoint(str(path))
    rec = Phases()
    t = Trainer(funnel_config(tiny_config, pretrained=str(path)), [rec])
    t.fit()
    # the full-rank decomposition computes the pretrained function
    assert rec.phases[0][1]["val_accuracy"] == plain.evaluate("val")[0]
    assert rec.phases[0][1]["test_accuracy"] == plain.evaluate("test")[0]
    with pytest.raises(FileNotFoundError, match="pretrained checkpoint .* not found"):
        Trainer(funnel_config(tiny_config, pretrained=str(tmp_path / "missing.pt")))
