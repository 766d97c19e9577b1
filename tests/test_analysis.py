"""e_opt analysis on synthetic trials where the answer is known by construction
(``tests/synthetic_trials.py``)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from synthetic_trials import E_OPT, C, K, optimum_pnr, wd_trials

from sweeps.analysis import (
    EDGE,
    TOO_FEW,
    USED,
    Trial,
    analyze,
    fold_identical,
    group_by_strength,
    pareto_front,
)
from sweeps.analysis_report import report_lines
from sweeps.eopt import locate_optimum, suggest_pnr


def test_e_opt_with_an_edge_group_recovers_the_interior_optimum_and_lists_the_edge():
    # θ = 1e-4, 1e-3, 1e-2: optima at pNR ≈ 2.4, 42, 750 (interior); θ = 0.1 at ≈ 13000:
    # its best is the largest pNR tried, an edge that must not be averaged in.
    a = analyze(wd_trials([1e-4, 1e-3, 1e-2, 1e-1]))
    assert a.e_opt == pytest.approx(E_OPT, rel=0.10)
    assert a.e_opt_low <= E_OPT <= a.e_opt_high
    assert a.centre.groups == 3
    by_theta = {g.group.strength[1][1]: g for g in a.groups}
    assert [by_theta[t].status for t in (1e-4, 1e-3, 1e-2)] == [USED] * 3
    edge = by_theta[0.1]
    assert edge.status == EDGE and edge.best.pnr == 3000 and edge.best_pnr_text == "≥3000"
    assert (
        "best at the edge pNR=3000 (the largest tried): widen the pNR range upward" in edge.reason
    )
    assert edge.next_pnr == [9000, 27000]
    assert "train longer" not in edge.reason  # the synthetic trials do not say how long they ran
    for t in edge.group.trials:
        t.steps = 12000
    assert "a run of 12000 steps has fewer than 2 distortions at pNR 9000: train longer too" in (
        analyze(edge.group.trials).groups[0].reason
    )
    # Averaging the edge group's best in would have pulled e_opt far off.
    biased = 10 ** ((3 * math.log10(a.e_opt) + edge.optimum.x) / 4)
    assert abs(biased / E_OPT - 1) > 0.10


def test_group_optima_come_from_the_curve_not_only_the_best_trial():
    # Without noise the parabola through the best point and its neighbours is exact.
    a = analyze(wd_trials([1e-3], noise=0.0))
    g = a.groups[0]
    assert g.optimum.e_w_per_pnr == pytest.approx(E_OPT, rel=1e-6)
    assert g.optimum.how.startswith("quadratic fit")
    best_trial_x = g.best.x
    assert abs(best_trial_x - math.log10(E_OPT)) > 0.05  # the grid misses the optimum itself


def test_locate_optimum_at_an_end_or_on_a_convex_curve_keeps_the_best_point():
    end = locate_optimum([(0, 0.5), (1, 0.6), (2, 0.7)])
    assert end.x == 2 and "end of the curve" in end.how
    # Dense points (0.2 decade apart): a least-squares parabola over the best and two
    # neighbours on each side, which here opens upward (noise): the best point's x stands.
    ys = [0.1, 0.2, 0.89, 0.5, 0.9, 0.5, 0.89, 0.2, 0.1]
    noisy = locate_optimum([(0.2 * i, y) for i, y in enumerate(ys)])
    assert noisy.x == pytest.approx(0.8) and "do not bend down" in noisy.how
    smooth = locate_optimum([(0.2 * i, -((0.2 * i - 0.9) ** 2)) for i in range(9)])
    assert smooth.x == pytest.approx(0.9) and smooth.how == "quadratic fit over 5 points"
    # two equal best points: the optimum lies between them
    assert locate_optimum([(0, 0.5), (1, 0.7), (2, 0.7)]).x == pytest.approx(1.5)
    # the vertex stays within half the distance to each neighbour
    skewed = locate_optimum(
        [(0, 0.0), (1, 0.1), (2, 0.9), (3, 0.95), (4, 0.94), (5, 0.1), (6, 0.0), (7, 0.0)]
    )
    assert 2.5 <= skewed.x <= 3.5


@pytest.mark.parametrize("k", [0.0, 0.5])
def test_suggested_pnr_recovers_a_known_power_law(k):
    pnrs = [10, 30, 100, 300, 1000]
    e_ws = [2e-4 * p**k for p in pnrs]
    s = suggest_pnr(pnrs, e_ws, 1e-6)
    expected = (2e-4 / 1e-6) ** (1 / (1 - k))  # 200 for k = 0, 40000 for k = 0.5
    assert s.pnr == pytest.approx(expected, rel=1e-6)
    assert s.k == pytest.approx(k, abs=1e-9)
    assert s.extrapolated == (expected > 1000)


def test_a_suggestion_where_e_w_grows_almost_as_fast_as_pnr_is_called_loose():
    pnrs = [1, 10, 100]
    s = suggest_pnr(pnrs, [1e-4 * p**0.8 for p in pnrs], 5e-5)
    assert s.pnr == pytest.approx(2**5, rel=1e-6) and not s.extrapolated
    assert "k = 0.80" in s.note and "32-fold" in s.note and "loose hint" in s.note
    s = suggest_pnr(pnrs, [1e-4 * p**0.5 for p in pnrs], 5e-5)
    assert s.note == ""  # k = 0.5: a factor 2 in e_opt is a factor 4 in pNR


def test_suggested_pnr_per_strength_through_analyze():
    a = analyze(wd_trials([1e-4, 1e-3, 1e-2], noise=0.0))
    for g in a.groups:
        theta = g.group.strength[1][1]
        # e_opt is recovered, so each strength's suggestion lands on its own optimum
        assert g.suggestion.pnr == pytest.approx(optimum_pnr(theta), rel=0.05)
        assert g.suggestion.k == pytest.approx(K, abs=1e-6)
    assert [g.suggestion.extrapolated for g in a.groups] == [False, False, False]


def test_a_strength_tried_at_one_pnr_is_labelled_extrapolated():
    trials = wd_trials([1e-3]) + wd_trials([1e-2], pnrs=[100])
    a = analyze(trials)
    single = next(g for g in a.groups if g.group.strength[1][1] == 1e-2)
    assert single.status == TOO_FEW
    assert "only 1 distinct pNR (100)" in single.reason
    s = single.suggestion
    assert s.extrapolated and s.k is None and "one pNR tried" in s.note
    assert s.pnr == pytest.approx(C * 1e-2 * 100**K / a.e_opt)  # e_w assumed independent of pNR
    assert s.text().endswith("(extrapolated)")


def test_suggested_pnr_follows_a_saturating_e_w_locally():
    # e_w grows as pNR^0.8 up to pNR 100 and is flat beyond (weights settled): a single
    # log-log line over all pNR would put e_opt = 1e-5 (reached at pNR 10) near pNR 4.
    pnrs = [1, 3, 10, 30, 100, 300, 1000]
    e_ws = [1e-5 * min(p, 100) ** 0.8 for p in pnrs]
    s = suggest_pnr(pnrs, e_ws, 1e-5 * 10**0.8 / 10)
    assert s.pnr == pytest.approx(10, rel=1e-6) and not s.extrapolated
    assert s.k == pytest.approx(0.8)
    # replicates are averaged per pNR (in log space) before the fit
    s = suggest_pnr([*pnrs, 10], [*e_ws, e_ws[2]], 1e-5 * 10**0.8 / 10)
    assert s.pnr == pytest.approx(10, rel=1e-6)


def test_a_collapsed_pnr_is_left_out_of_the_suggestion():
    # At pNR 1 the strength kills the weights: e_w/pNR there falls below pNR 3's.
    pnrs, e_ws = [1, 3, 10, 30, 100], [1e-6, 3e-3, 5e-3, 8e-3, 1e-2]
    s = suggest_pnr(pnrs, e_ws, 1e-4)
    assert 30 < s.pnr < 100 and not s.extrapolated
    assert "left out pNR 1" in s.note and "collapsed" in s.note
    # beyond the tried range: the outermost pair's line, marked
    s = suggest_pnr(pnrs, e_ws, 1e-5)
    assert s.pnr > 100 and s.extrapolated and "outside the tried pNR 1–100" in s.note


def test_suggestion_below_one_is_clamped_and_faster_than_pnr_growth_has_none():
    s = suggest_pnr([1, 10, 100], [1e-7, 1e-7, 1e-7], 1e-6)
    assert s.pnr == 1.0 and "clamped to 1" in s.note and s.extrapolated
    s = suggest_pnr([1, 10, 100], [1e-6, 1e-5, 1e-4], 1e-6)
    assert s.pnr is None and "grows as fast as pNR" in s.note


def test_no_interior_group_says_it_cannot_support_an_e_opt_and_what_to_run():
    # Every θ's optimum lies beyond the tried pNR, and one θ has two pNR only.
    trials = wd_trials([1e-1], pnrs=[1, 10, 100, 1000]) + wd_trials([1e-2], pnrs=[10, 100])
    a = analyze(trials)
    assert a.centre is None and a.e_opt is None and a.reg_error == {}
    assert all(g.suggestion is None for g in a.groups)
    text = "\n".join(a.cannot_support())
    assert "cannot support an e_opt" in text and "Run next" in text
    assert "theta=0.1: tried pNR 1, 10, 100, 1000; add pNR 10000, 100000" in text
    assert "theta=0.01: tried pNR 10, 100; add pNR 1000" in text


def test_best_at_pnr_1_asks_for_a_stronger_setting():
    a = analyze(wd_trials([1e-6], pnrs=[1, 10, 100]))
    g = a.groups[0]
    assert g.status == EDGE and "smallest possible" in g.reason and "stronger" in g.reason


def test_regularization_error_is_signed_log_distance():
    a = analyze(wd_trials([1e-4, 1e-3, 1e-2]))
    for t in a.used:
        assert a.reg_error[t.trial_id] == pytest.approx(math.log10(t.mean_e_w_per_pnr / a.e_opt))
    assert min(a.reg_error.values()) < -1 and max(a.reg_error.values()) > 1  # both sides


def test_bootstrap_range_is_reproducible():
    a, b = analyze(wd_trials([1e-4, 1e-3])), analyze(wd_trials([1e-4, 1e-3]))
    assert (a.e_opt_low, a.e_opt_high) == (b.e_opt_low, b.e_opt_high)
    assert a.e_opt_low < a.e_opt < a.e_opt_high


def test_trials_that_did_not_finish_cleanly_are_skipped_with_their_reason():
    base = {"pnr": 7, "lr": 0.001, "theta": 1e-3}  # a configuration none of wd_trials shares
    bad = [
        Trial("fail", "weight_decay", base, None, None, None, status="FAILED"),
        Trial(
            "div",
            "weight_decay",
            base,
            0.1,
            1e-4,
            1e-5,
            status="FAILED",
            outcome="diverged",
            outcome_reason="non-finite loss at step 40",
        ),  # fmt: skip
        Trial("stop", "weight_decay", base, 0.8, 1e-4, 1e-5, status="KILLED", outcome="stopped"),
        Trial("run", "weight_decay", base, 0.95, 1e-4, 1e-5, status="RUNNING"),
        Trial("noval", "weight_decay", base, None, 1e-4, 1e-5, test_accuracy=0.99),
        Trial("nan", "weight_decay", base, float("nan"), 1e-4, 1e-5),
        Trial("zero", "weight_decay", base, 0.9, 0.0, 0.0),
    ]
    a = analyze(wd_trials([1e-4, 1e-3]) + bad)
    reasons = {t.trial_id: why for t, why in a.skipped}
    assert reasons == {
        "fail": "failed",
        "div": "diverged: non-finite loss at step 40",
        "stop": "stopped early by the scheduler",
        "run": "still running",
        "noval": "missing metric(s): val_accuracy",
        "nan": "non-finite metric(s): val_accuracy",
        "zero": "no weight change (e_w = 0): nothing to place on the log(e_w/pNR) axis",
    }
    assert a.e_opt == pytest.approx(E_OPT, rel=0.10)


def test_a_configuration_with_a_seed_that_did_not_finish_is_left_out_with_the_reason():
    trials = wd_trials([1e-4, 1e-3])
    t = next(t for t in trials if t.knobs == {"pnr": 10, "lr": 0.001, "theta": 1e-4})
    same = (t.method, dict(t.knobs))
    lucky = Trial("seed1", *same, 0.99, t.mean_e_w, t.mean_e_w_per_pnr, seed=1)
    diverged = Trial("seed2", *same, None, None, None, status="FAILED", outcome="diverged",
                     outcome_reason="non-finite loss at step 3", seed=2)  # fmt: skip
    running = Trial("seed3", *same, 0.5, t.mean_e_w, t.mean_e_w_per_pnr, status="RUNNING", seed=3)
    a = analyze([*trials, lucky, diverged, running])
    reasons = {x.trial_id: why for x, why in a.skipped}
    left = "its configuration is left out: 1 of 4 seeds diverged, 1 still running"
    assert reasons == {t.trial_id: left, "seed1": left, "seed3": "still running",
                       "seed2": "diverged: non-finite loss at step 3"}  # fmt: skip
    # neither finished seed stands for the configuration: pNR 10 is off the theta=1e-4 curve
    assert {t.trial_id, "seed1"}.isdisjoint(x.trial_id for x in a.used)
    group = next(g for g in a.groups if g.group.strength[1][1] == 1e-4)
    assert 10 not in group.pnrs and 3 in group.pnrs
    assert f"  trial seed1 (run None): {left}" in report_lines(a, "s")
    # once every seed has finished, the configuration is one averaged point again
    done = [replace(diverged, status="FINISHED", outcome=None, val_accuracy=0.89, mean_e_w=t.mean_e_w,
                    mean_e_w_per_pnr=t.mean_e_w_per_pnr),
            replace(running, status="FINISHED", val_accuracy=0.88)]  # fmt: skip
    a = analyze([*trials, lucky, *done])
    assert not a.skipped
    point = next(p for g in a.groups for p in g.points
                 if t.trial_id in {x.trial_id for x in p.trials})  # fmt: skip
    assert len(point.trials) == 4
    assert point.val_accuracy == pytest.approx((t.val_accuracy + 0.99 + 0.89 + 0.88) / 4)


def test_test_accuracy_never_selects():
    trials = wd_trials([1e-3], noise=0.0)
    worst = min(trials, key=lambda t: t.val_accuracy)
    worst.test_accuracy = 1.0
    a = analyze(trials)
    assert a.groups[0].best.trials[0] is not worst


def test_identical_configurations_are_folded_and_counted():
    trials = wd_trials([1e-4, 1e-3])
    again = [Trial(t.trial_id + "-again", t.method, dict(t.knobs), t.val_accuracy, t.mean_e_w,
                   t.mean_e_w_per_pnr, t.test_accuracy, seed=t.seed) for t in trials[:4]]  # fmt: skip
    replicate_acc = trials[0].val_accuracy + 0.002
    other_seed = Trial("seed1", "weight_decay", dict(trials[0].knobs), replicate_acc, trials[0].mean_e_w,
                       trials[0].mean_e_w_per_pnr, seed=1)  # fmt: skip
    a = analyze(trials + again + [other_seed])
    assert a.folded == 4 and len(a.used) == len(trials) + 1
    first = next(t for t in a.used if t.trial_id == trials[0].trial_id)
    assert first.folded == [trials[0].trial_id + "-again"]
    # another seed is a replicate, not a duplicate: it is averaged into the same curve point
    g = next(g for g in a.groups if g.group.strength[1][1] == 1e-4)
    point = next(p for p in g.points if p.pnr == 1)
    assert len(point.trials) == 2
    assert point.val_accuracy == pytest.approx(trials[0].val_accuracy + 0.001)
    assert a.e_opt == pytest.approx(analyze(trials).e_opt, rel=0.10)


def test_folding_averages_differing_duplicates():
    t = Trial("a", "prune", {"pnr": 5, "rate": 0.5}, 0.8, 1e-3, 2e-4, seed=0)
    u = Trial("b", "prune", {"pnr": 5, "rate": 0.5}, 0.9, 1e-3, 2e-4, seed=0)
    (f,) = fold_identical([t, u])
    assert f.trial_id == "a" and f.folded == ["b"] and f.val_accuracy == pytest.approx(0.85)


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


def test_pareto_front_ranks_on_validation_accuracy():
    trials = [Trial("a", "p", {"pnr": 1}, 0.9, 1, 1, compression_ratio=2.0), Trial("b", "p", {"pnr": 1}, 0.8, 1, 1, compression_ratio=5.0),
              Trial("c", "p", {"pnr": 1}, 0.7, 1, 1, compression_ratio=4.0), Trial("d", "p", {"pnr": 1}, 0.9, 1, 1, compression_ratio=1.5),
              Trial("e", "p", {"pnr": 1}, 0.6, 1, 1, test_accuracy=1.0, compression_ratio=9.0, status="FAILED")]  # fmt: skip
    assert [t.trial_id for t in pareto_front(trials)] == ["a", "b"]


def test_optima_follow_the_metric_direction_a_loss_is_minimized():
    # The same sweep with a validation loss that is lowest at E_OPT (and an accuracy that
    # only plateaus): the analysis on val_loss finds the minimum, the one on accuracy cannot.
    trials = wd_trials([1e-3, 1e-2], noise=0.0)
    for t in trials:
        gap = math.log10(t.mean_e_w_per_pnr) - math.log10(E_OPT)
        t.metrics = {"val_loss": 0.3 + 0.05 * gap**2}
        t.val_accuracy = 0.9 if gap < 0.5 else 0.9 - 0.05 * gap  # a plateau below e_opt
    a = analyze(trials, metric="val_loss")
    assert a.metric == "val_loss" and a.centre.groups == 2
    assert a.e_opt == pytest.approx(E_OPT, rel=0.10)
    for g in a.groups:
        assert g.best.value == min(p.value for p in g.points)
    # the accuracy plateau runs into the smallest e_w/pNR tried: an edge for every group
    assert analyze(trials).centre is None


def test_the_analysis_metric_must_be_a_validation_metric():
    for metric, why in [("test_accuracy", "test split"), ("compression_ratio", "no validation"),
                        ("val_acc", "unknown metric")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            analyze(wd_trials([1e-3]), metric=metric)
    # a trial without the metric is skipped with its name
    t = wd_trials([1e-3])[0]
    a = analyze([t], metric="val_loss")
    assert a.skipped[0][1] == "missing metric(s): val_loss"


def _tied_at_the_top_edge() -> list[Trial]:
    """One strength at pNR 10, 49, 123; 49 and 123 tie on validation accuracy."""
    rows = [(10, 0.90, 2.0e-5), (49, 0.95, 4.449e-5), (123, 0.95, 6.66e-5)]
    return [Trial(f"t{p}", "prune", {"pnr": p, "rate": 0.9}, acc, e * p, e)
            for p, acc, e in rows]  # fmt: skip


def test_a_tie_reaching_the_edge_reports_the_edge_trials_e_w_per_pnr():
    (g,) = analyze(_tied_at_the_top_edge()).groups
    assert g.status == EDGE and g.best.pnr == 123 and g.best_pnr_text == "≥123"
    assert g.optimum.e_w_per_pnr == pytest.approx(6.66e-5)  # the pNR=123 trial's, not 49's
    assert "outside" not in g.reason  # the space's range is not known here


def test_pnr_to_add_outside_the_spaces_range_are_marked():
    a = analyze(_tied_at_the_top_edge(), pnr_range=(1, 200))
    (g,) = a.groups
    assert g.next_pnr == [310, 780]
    assert g.reason.endswith(
        "(add 310, 780); 310, 780 outside the space's pNR range [1, 200]: widen space.overrides.pnr"
    )
    assert "add pNR 310, 780 (310, 780 outside the space's pNR range [1, 200]" in "\n".join(
        a.cannot_support()
    )
    (inside,) = analyze(_tied_at_the_top_edge(), pnr_range=(1, 5000)).groups
    assert "outside" not in inside.reason and inside.range_note == ""
