"""e_opt analysis on synthetic trial results where the answer is known by construction."""

from __future__ import annotations

import pytest

from sweeps.analysis import Trial, analyze, group_by_strength, pareto_front

E_OPT = 2e-4


def synthetic_trials() -> list[Trial]:
    """Three pruning rates; each with pNRs around its optimum. By construction the most
    accurate trial of each rate has e_w/pNR = E_OPT, and e_w(rate) is known."""
    trials = []
    for rate, e_w in ((0.5, 0.002), (0.7, 0.01), (0.9, 0.05)):
        best_pnr = e_w / E_OPT  # 10, 50, 250
        for factor in (0.25, 0.5, 1.0, 2.0, 4.0):
            pnr = best_pnr * factor
            acc = 0.95 - 0.02 * abs(factor - 1.0) - 0.1 * rate
            trials.append(Trial(f"r{rate}-x{factor}", "prune", {"pnr": pnr, "rate": rate, "lr": 0.05},
                                acc, e_w, e_w / pnr, compression_ratio=1 / (1 - rate)))  # fmt: skip
    return trials


def test_e_opt_regularization_error_and_suggested_pnr_match_construction():
    a = analyze(synthetic_trials())
    assert a.e_opt == pytest.approx(E_OPT)
    assert len(a.groups) == 3 and a.used == 15 and not a.skipped
    assert a.reg_error["r0.9-x1.0"] == pytest.approx(0.0, abs=1e-12)
    assert a.reg_error["r0.5-x2.0"] == pytest.approx(abs(0.002 / 20 - E_OPT))
    suggested = {label.split("rate=")[1]: v for label, v in a.suggested_pnr.items()}
    assert suggested == pytest.approx({"0.5": 10.0, "0.7": 50.0, "0.9": 250.0})


def test_missing_and_failed_trials_are_skipped_and_reported():
    trials = synthetic_trials()
    trials.append(
        Trial("failed", "prune", {"pnr": 5, "rate": 0.5}, None, None, None, status="FAILED")
    )
    trials.append(
        Trial("running", "prune", {"pnr": 5, "rate": 0.5}, 0.99, 0.1, 0.02, status="RUNNING")
    )
    trials.append(Trial("nan", "prune", {"pnr": 5, "rate": 0.5}, float("nan"), 0.1, 0.02))
    a = analyze(trials)
    assert sorted(a.skipped) == ["failed", "nan", "running"]
    assert a.e_opt == pytest.approx(E_OPT)


def test_no_usable_trial_is_a_clear_error():
    with pytest.raises(ValueError, match="no finished trial"):
        analyze([Trial("f", "prune", {"pnr": 1, "rate": 0.5}, None, None, None, status="FAILED")])


def test_continuous_strengths_are_binned():
    trials = [Trial(str(i), "prune", {"pnr": 10, "rate": r}, 0.9, 0.01, 0.001) for i, r in
              enumerate([0.50, 0.51, 0.52, 0.89, 0.90])]  # fmt: skip
    groups = group_by_strength(trials, bins=2)
    assert sorted(len(g.trials) for g in groups) == [2, 3]
    # log bins when a knob spans decades (decay factors)
    trials = [Trial(str(i), "weight_decay", {"pnr": 10, "theta": t}, 0.9, 0.01, 0.001) for i, t in
              enumerate([1e-5, 1.2e-5, 1e-3, 1.1e-3, 1e-1])]  # fmt: skip
    assert sorted(len(g.trials) for g in group_by_strength(trials, bins=4)) == [1, 2, 2]


def test_methods_never_share_a_group():
    trials = [Trial("a", "prune", {"pnr": 1, "rate": 0.5}, 0.9, 0.1, 0.1),
              Trial("b", "tucker2", {"pnr": 1, "rc": 0.5}, 0.9, 0.1, 0.1)]  # fmt: skip
    assert len(group_by_strength(trials)) == 2


def test_pareto_front():
    trials = [Trial("a", "p", {}, 0.9, 1, 1, compression_ratio=2.0), Trial("b", "p", {}, 0.8, 1, 1, compression_ratio=5.0),
              Trial("c", "p", {}, 0.7, 1, 1, compression_ratio=4.0), Trial("d", "p", {}, 0.9, 1, 1, compression_ratio=1.5)]  # fmt: skip
    assert [t.trial_id for t in pareto_front(trials)] == ["a", "b"]
