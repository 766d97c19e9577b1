"""The e_opt-guided sampler on a synthetic problem whose accuracy peaks at a known e_w/pNR."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest

from sweeps.eopt_sampler import E_W_ATTR, PHASE_ATTR, TARGET_ATTR, EoptSampler, solve_pnr

E_OPT = 1e-3  # where the synthetic accuracy peaks
K = 0.5  # e_w = C · rate · pNR^K
C = 0.01


def e_w(rate: float, pnr: float) -> float:
    return C * rate * pnr**K


def objective(trial: optuna.Trial) -> float:
    pnr = trial.suggest_int("pnr", 1, 5000, log=True)
    rate = trial.suggest_float("rate", 0.5, 0.99)
    ew = e_w(rate, pnr)
    trial.set_user_attr(E_W_ATTR, ew)
    err = math.log10(ew / pnr) - math.log10(E_OPT)
    return 0.9 - 0.05 * err**2 - 0.02 * (rate - 0.5)


def phases(study: optuna.Study) -> list[str]:
    return [t.user_attrs.get(PHASE_ATTR, "") for t in study.trials]


def in_range(study: optuna.Study, sampler: EoptSampler, trials: list) -> None:
    """The estimated range holds the true e_opt; each guided trial lands at the target it drew
    within the range of its time (the fit of e_w(pNR) is right), and the guided trials centre
    on the true e_opt."""
    est = sampler.estimate(study)
    assert est is not None
    assert 10**est.low <= E_OPT <= 10**est.high, est
    ratios = []
    for t in trials:
        ratio = t.user_attrs[E_W_ATTR] / t.params["pnr"]
        target = t.user_attrs[TARGET_ATTR]
        # pNR is an integer: a little off the target at small pNR.
        assert target / 1.3 <= ratio <= target * 1.3, (t.number, t.params, ratio, target)
        ratios.append(ratio)
    assert E_OPT / 2 <= statistics.median(ratios) <= E_OPT * 2, ratios


def test_pilot_then_guided_pnr_lands_in_the_range() -> None:
    sampler = EoptSampler(seed=1, pilot_strengths=2, pilot_pnrs=4, explore=0.0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=20)
    ph = phases(study)
    n = ph.count("pilot")
    # One strength at 3 pNR can already place e_opt; the whole plan is 2 x 4.
    assert 3 <= n <= 8 and ph == ["pilot"] * n + ["guided"] * (20 - n), ph
    pilot = study.trials[:n]
    assert len({round(t.params["rate"], 4) for t in pilot}) == 2
    assert len({t.params["pnr"] for t in pilot}) >= 3
    in_range(study, sampler, study.trials[n:])


def test_the_pilot_plan_follows_the_seed() -> None:
    plans = []
    for seed in (0, 0, 1):
        study = optuna.create_study(direction="maximize", sampler=EoptSampler(seed=seed))
        study.optimize(objective, n_trials=4)
        plans.append([(t.params["pnr"], round(t.params["rate"], 6)) for t in study.trials])
    assert plans[0] == plans[1] != plans[2]


def test_given_e_opt_runs_no_pilot() -> None:
    sampler = EoptSampler(seed=2, e_opt=(E_OPT, E_OPT / 2, E_OPT * 2), explore=0.0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=10)
    ph = phases(study)
    assert "pilot" not in ph
    assert ph[0] == "probe" and ph[1:] == ["guided"] * 9, ph
    # e_w(pNR) needs 3 finished trials (intercept, exponent, strength) to be fitted well.
    in_range(study, sampler, study.trials[3:])


def test_resume_continues_from_the_persisted_study(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = optuna.create_study(study_name="s", storage=url, direction="maximize",
                                sampler=EoptSampler(seed=3, explore=0.0))  # fmt: skip
    first.optimize(objective, n_trials=5)  # stops inside the pilot (8 trials)
    again = EoptSampler(seed=4, explore=0.0)
    study = optuna.load_study(study_name="s", storage=url, sampler=again)
    study.optimize(objective, n_trials=11)
    ph = phases(study)
    n = ph.count("pilot")
    assert 3 <= n <= 8 and ph == ["pilot"] * n + ["guided"] * (16 - n), ph
    slots = [t.user_attrs["eopt_pilot_slot"] for t in study.trials[:n]]
    assert slots == list(range(n))  # the resumed sampler picked the plan up where it stopped
    in_range(study, again, study.trials[n:])


def test_flat_e_w_needs_no_fit_in_pnr() -> None:
    """e_w independent of pNR: one trial suffices, pNR = e_w / target."""
    points = [(10.0, {"rate": 0.5}, 2e-2)]
    assert solve_pnr(points, {"rate": 0.5}, 1e-3) == pytest.approx(20.0)


def test_solve_pnr_recovers_a_power_law_across_strengths() -> None:
    points = [(p, {"rate": r}, e_w(0.5 + 0.49 * r, p)) for p in (3, 30, 300) for r in (0.1, 0.9)]
    pnr = solve_pnr(points, {"rate": 0.5}, E_OPT)
    rate = 0.5 + 0.49 * 0.5
    assert e_w(rate, pnr) / pnr == pytest.approx(E_OPT, rel=0.15)


def test_bad_arguments_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="low <= value <= high"):
        EoptSampler(e_opt=(1e-3, 2e-3, 5e-3))
    with pytest.raises(ValueError, match=">= 3 pNR"):
        EoptSampler(pilot_pnrs=2)
