"""Nuclear-norm proximal training: soft-thresholding, sparse group Lasso, the energy rule,
the truncation at the last event and the two-layer export, and the trainer path (pNR events,
``pnr: epoch``, resume)."""

from __future__ import annotations

import pytest
import torch
from resume_check import assert_resume_is_exact
from torch import nn

from trainers.callbacks import Callback
from trainers.config import ConfigError, parse_train_config
from trainers.distortions import DistortionContext, make_distortion
from trainers.distortions.nuclear import energy_rank, numerical_rank
from trainers.export import compression_report, export
from trainers.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ctx(lr: float, event: int = 0, num_events: int = 10) -> DistortionContext:
    return DistortionContext(step=10, total_steps=100, event=event, num_events=num_events, lr=lr)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_singular_values_are_soft_thresholded_by_lr_times_tau():
    w = rand(6, 3, 2, 2)  # lowered 6×12
    out = make_distortion("nuclear", tau=0.4).apply({"w": w}, ctx(lr=0.5))["w"]
    s = torch.linalg.svdvals(w.reshape(6, -1))
    torch.testing.assert_close(torch.linalg.svdvals(out.reshape(6, -1)), (s - 0.2).clamp_min(0))
    # singular vectors are kept: out = U·diag(σ')·Vᵀ
    u, _, vh = torch.linalg.svd(w.reshape(6, -1), full_matrices=False)
    expected = (u * (s - 0.2).clamp_min(0)) @ vh
    torch.testing.assert_close(out.reshape(6, -1), expected)


def test_rank_decreases_as_tau_grows():
    w = rand(16, 24)
    s = torch.linalg.svdvals(w)
    ranks = []
    for tau in [0.0, 1.0, 2.0, 4.0, 6.0, float(s[0]) - 0.1]:
        out = make_distortion("nuclear", tau=tau).apply({"w": w}, ctx(lr=1.0))["w"]
        ranks.append(numerical_rank(out))
        assert ranks[-1] == int((s > tau).sum()) or tau == 0
    assert ranks[0] == 16 and ranks[-1] == 1
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) >= 4


def test_tau_zero_or_lr_zero_changes_nothing():
    w = rand(5, 7).float()
    for d, c in [
        (make_distortion("nuclear"), ctx(0.1)),
        (make_distortion("nuclear", tau=3.0), ctx(0.0)),
    ]:
        assert torch.equal(d.apply({"w": w}, c)["w"], w)


@pytest.mark.parametrize("energy,rank", [(40, 1), (70, 2), (70.1, 3), (90, 3), (99, 4), (100, 4)])
def test_energy_rule_picks_the_documented_rank(energy, rank):
    """σ = (4, 3, 2, 1), Σ = 10: the smallest r with σ_1 + … + σ_r ≥ e_l % of 10."""
    assert energy_rank(torch.tensor([4.0, 3.0, 2.0, 1.0]), energy) == rank


def test_energy_rule_at_100_counts_only_nonzero_singular_values():
    assert energy_rank(torch.tensor([4.0, 3.0, 1e-9, 0.0]), 100) == 2
    assert energy_rank(torch.zeros(3), 100) == energy_rank(torch.zeros(3), 50) == 1


def test_sparse_group_lasso_shrinks_rows_and_zeroes_weak_units():
    w = torch.tensor(
        [[3.0, 4.0], [0.3, 0.4], [-1.0, 0.5]], dtype=torch.float64
    )  # norms 5, .5, ~1.12
    lr, lam = 0.5, 1.0
    # α = 0: group step only, threshold lr·λ·√P = 0.5·√2 ≈ 0.707 on the row norms
    out = make_distortion("nuclear", lam=lam).apply({"w": w}, ctx(lr))["w"]
    t = lr * lam * 2**0.5
    torch.testing.assert_close(out[0], w[0] * (1 - t / 5))
    assert torch.equal(out[1], torch.zeros(2))
    torch.testing.assert_close(out[2], w[2] * (1 - t / w[2].norm()))
    # α = 1: an elementwise soft-threshold by lr·λ = 0.5
    out = make_distortion("nuclear", lam=lam, alpha=1.0).apply({"w": w}, ctx(lr))["w"]
    torch.testing.assert_close(out, w.sign() * (w.abs() - 0.5).clamp_min(0))


def test_per_layer_lambda_groups():
    d = make_distortion("nuclear", lam=0.0, lam_layers={"conv*": 100.0})
    w = rand(3, 4)
    out = d.apply({"conv1.weight": w, "fc.weight": w}, ctx(0.1))
    assert torch.equal(out["conv1.weight"], torch.zeros(3, 4))  # λ = 100: every unit removed
    assert torch.equal(out["fc.weight"], w)  # λ = 0


def test_last_event_truncates_to_the_energy_rank_and_export_matches():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 16, 30)
    ).double()
    d = make_distortion("nuclear", tau=0.5, energy=80)
    names = ["2.weight", "4.weight"]
    params = dict(model.named_parameters())
    weights = {n: params[n].detach().clone() for n in names}
    not_last = d.apply(weights, ctx(lr=0.1, event=3, num_events=5))
    last = d.apply(weights, ctx(lr=0.1, event=4, num_events=5))
    for n in names:
        m = weights[n].shape[0]
        s = torch.linalg.svdvals(not_last[n].reshape(m, -1))
        r = energy_rank(s, 80)
        assert r < min(s.shape[0], not_last[n].numel() // m)
        assert numerical_rank(last[n]) == r  # truncated after the proximal step
        assert numerical_rank(not_last[n]) == s.shape[0]
        with torch.no_grad():
            params[n].copy_(last[n])
    exported = export(model, d, names)
    assert [m.weight.shape[0] for m in exported[2]] == [numerical_rank(last["2.weight"]), 16]
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
    report = compression_report(model, exported, (3, 8, 8), torch.float64)
    stored = sum(d.stored_params(n, params[n]) - params[n].numel() for n in names)
    assert report["params_after"] - report["params_before"] == stored < 0


def test_a_layer_whose_factorization_would_not_pay_stays_dense():
    w = rand(4, 5)  # rank 4: 4·(4 + 5) = 36 ≥ 20
    d = make_distortion("nuclear", energy=99)
    assert torch.equal(d.apply({"w": w}, ctx(0.1, event=9))["w"], w)
    assert d.stored_params("w", w) == 20 and d.macs_fraction("w", w) == 1.0
    assert d.export_layer(nn.Linear(5, 4), w) is None


def test_bad_knobs_are_config_errors():
    for params, msg in [
        ({"tau": -1}, "tau must be >= 0"),
        ({"alpha": 2}, r"alpha must be in \[0, 1\]"),
        ({"energy": 0}, r"energy must be a percentage in \(0, 100\]"),
        ({"rank": 3}, "its knobs are: tau, alpha, lam, energy, lam_layers"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_train_config(
                {"compression": {"method": "nuclear", "params": params}, "run": {"steps": 5}}
            )


# ------------------------------------------------------------------------------------------
# The trainer path


class Events(Callback):
    def __init__(self):
        self.events: list[tuple[int, dict]] = []

    def on_distortion(self, trainer, step, metrics):
        self.events.append((step, metrics))


def nuclear_config(tiny_config, **compression):
    return tiny_config(
        compression={
            "method": "nuclear",
            "pnr": "epoch",
            "params": {"tau": 4.0, "energy": 95},
            **compression,
        },
        run={"epochs": 3, "steps": None, "eval_every": 1.0},
        optim={"lr": 0.05, "momentum": 0.9},
    )


def test_trainer_runs_proximal_events_every_epoch_and_ends_compressed(tiny_config):
    rec = Events()
    t = Trainer(nuclear_config(tiny_config), [rec])
    assert t.pnr == t.steps_per_epoch == 8
    final = t.fit()
    assert [s for s, _ in rec.events] == [8, 16, 24]
    assert all(
        {"e_w", "delta_w", "delta_loss_ratio"} <= m.keys() and m["e_w"] > 0 for _, m in rec.events
    )
    assert final["params"] < final["params_dense"] and final["macs"] < final["macs_dense"]
    assert t.distortion is not None
    exported = export(t.model, t.distortion, list(t.targets))
    assert (
        compression_report(t.model, exported, t.info.input_shape)["params_after"] == final["params"]
    )
    x = t.probe[0]
    t.model.eval()
    exported.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), t.model(x), atol=1e-5, rtol=1e-4)


def test_pnr_must_be_an_integer_or_epoch(tiny_config):
    with pytest.raises(ConfigError, match="compression.pnr: expected int, got 'weekly'"):
        nuclear_config(tiny_config, pnr="weekly")


def test_resume_reproduces_the_uninterrupted_run(tiny_config, tmp_path):
    cfg = nuclear_config(tiny_config, pnr=4, params={"tau": 2.0, "lam": 0.05, "alpha": 0.2})
    assert_resume_is_exact(cfg, tmp_path, 10)
