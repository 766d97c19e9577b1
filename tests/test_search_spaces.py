"""Search spaces: registry, overrides applied to a real Optuna study, branch discovery."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import SPACES, branches, check_overrides, define_by_run, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ask(space_fn, n=20, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        fixed = space_fn(trial)
        out.append({**trial.params, **fixed})
        study.tell(trial, 0.0)
    return out


def test_unknown_space_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*prune.*tucker2"):
        get_space("pruning")


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_runs_under_optuna(name):
    samples = ask(define_by_run(name), n=5)
    assert samples and all(s.get("pnr", 1) >= 1 for s in samples)  # funnel has no pNR


def test_overrides_narrow_fix_and_choose():
    fn = define_by_run(
        "prune", {"pnr": {"low": 3, "high": 9}, "rate": 0.9, "lr": {"choices": [0.01, 0.1]}}
    )
    samples = ask(fn, n=30)
    assert all(3 <= s["pnr"] <= 9 for s in samples)
    assert all(s["rate"] == 0.9 for s in samples)
    assert {s["lr"] for s in samples} == {0.01, 0.1}
    # a fixed knob is not searched: Optuna never sees it
    study = optuna.create_study()
    trial = study.ask()
    fn(trial)
    assert "rate" not in trial.params


def test_mixed_space_is_conditional():
    samples = ask(define_by_run("mixed", {"method": {"choices": ["prune", "tucker2"]}}), n=30)
    for s in samples:
        assert ("rate" in s) == (s["method"] == "prune")
        assert ("rc" in s) == (s["method"] == "tucker2")


def test_branches_cover_every_method():
    found = branches("mixed")
    methods = {b["method"]["taken"] for b in found}
    assert methods == {
        "weight_decay",
        "uniform_noise",
        "gaussian_noise",
        "prune",
        "quantize",
        "svd",
        "tiled_svd",
        "tucker2",
    }


def test_bad_overrides_are_named():
    problems = check_overrides(
        "prune", {"rc": 0.5, "pnr": {"low": 9, "high": 3}, "rate": {"lo": 0.5}}
    )
    assert any(p.startswith("space.overrides.rc: space 'prune' has no knob 'rc'") for p in problems)
    assert any(p.startswith("space.overrides.pnr: low 9 must not exceed high 3") for p in problems)
    assert any(p.startswith("space.overrides.rate: unknown key(s) ['lo']") for p in problems)
