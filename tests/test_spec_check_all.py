"""`compsweep run SPEC --check` lists every problem of a spec in one go: a bad override does not
hide the training config's problems, and what would only fail once the sweep runs (a step on a
log range, a repeated YAML key, a study database that cannot be opened) fails the check."""

from __future__ import annotations

import pytest

from sweeps.cli import main
from trainers import yamlio

SPEC = """\
name: t
train:
  data: {name: synthetic, batch_size: 16, options: {n_train: 64, n_test: 32}}
  model: {name: small_cnn}
  compression:
    method: prune
    params: PARAMS
  run: {steps: 6000, device: cpu}  # the prune space searches pNR up to 5000
space:
  name: prune
  overrides:
OVERRIDES
budget: {num_trials: 2}
"""
TYPO = (
    "space.overrides (rate=0.9): compression.params.rmap_end: unknown knob of prune (did you "
    "mean 'ramp_end'?); its knobs are: rate, scope, schedule, initial_rate, ramp_start, ramp_end"
)


def check(tmp_path, capsys, text: str, *argv: str, command: str = "run") -> tuple[int, list[str]]:
    """(exit code, problem lines) of `compsweep COMMAND FILE --check` on YAML ``text``."""
    path = tmp_path / "f.yaml"
    path.write_text(text)
    code = main([command, str(path), "--check", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line[4:] for line in err.splitlines() if line.startswith("  - ")]


def spec(overrides: dict[str, str], params: str = "{}") -> str:
    lines = "\n".join(f"    {k}: {v}" for k, v in overrides.items())
    return SPEC.replace("PARAMS", params).replace("OVERRIDES", lines)


def test_a_bad_override_hides_no_other_problem(tmp_path, capsys):
    overrides = {"pnr": "{low: 200, high: 1}", "rate": "{low: 0.5, high: 1.5}", "lr": -0.1}
    assert check(tmp_path, capsys, spec(overrides)) == (
        2,
        [
            "space.overrides.pnr: low 200 must not exceed high 1",
            "space.overrides.lr = -0.1: optim.lr: must be > 0, got -0.1",
            "space.overrides (rate=1.0): compression.params: prune: rate must be in [0, 1), got 1.0",
            "space.overrides.rate = 1.5: compression.params: prune: rate must be in [0, 1), got 1.5",
        ],
    )
    # A typo in the method's params, checked only with the space's knobs, is found too.
    overrides = {"pnr": "{low: 1, hihg: 200}", "rate": 0.9, "lr": 0.05}
    assert check(tmp_path, capsys, spec(overrides, "{rmap_end: 0.6}")) == (
        2,
        ["space.overrides.pnr: unknown key(s) ['hihg']; use low/high/log/step, or choices", TYPO],
    )
    overrides["pnr"] = "{low: 1, high: 200}"
    assert check(tmp_path, capsys, spec(overrides, "{rmap_end: 0.6}")) == (2, [TYPO])


def test_a_bad_override_of_the_branch_choosing_knob_checks_no_branch(tmp_path, capsys):
    text = spec({"method": "{low: 1, high: 2}"}).replace("name: prune\n", "name: mixed\n")
    code, problems = check(tmp_path, capsys, text)
    assert (code, len(problems)) == (2, 1) and problems[0].startswith(
        "space.overrides.method: method is a choice among"
    )


@pytest.mark.parametrize(
    "lr", ["{step: 1}", "{low: 1e-3, high: 1e-1, log: true, step: 1}", "{step: 0.01}"]
)
def test_a_float_knob_on_a_log_range_takes_no_step(tmp_path, capsys, lr):
    code, problems = check(tmp_path, capsys, spec({"lr": lr}))
    step = "0.01" if "0.01" in lr else "1"
    assert (code, problems) == (
        2,
        [f"space.overrides.lr: a log range takes no step (got step {step}); drop one of them"],
    )
    # An integer knob's step 1 is its spacing anyway: Optuna takes it on a log range.
    assert check(tmp_path, capsys, spec({"lr": 0.05, "pnr": "{step: 1}"}))[0] == 0


def test_repeated_keys_are_each_a_problem_with_their_lines(tmp_path, capsys):
    text = spec({"rate": "{low: 0.5, high: 0.95}", "lr": 0.05, "rate ": 0.99}) + (
        "budget: {num_trials: 3, num_trials: 4}\n"
    )
    assert check(tmp_path, capsys, text) == (
        2,
        [
            "duplicate key 'rate' at line 14 (earlier at line 12)",
            "duplicate key 'budget' at line 16 (earlier at line 15)",
            "duplicate key 'num_trials' at line 16 (earlier at line 16)",
        ],
    )
    config = "run: {steps: 4}\noptim:\n  lr: 0.1\n  lr: 0.2\n"
    assert check(tmp_path, capsys, config, command="train") == (
        2,
        ["duplicate key 'lr' at line 4 (earlier at line 3)"],
    )
    # A merge key's values may be overridden: that is what `<<` is for.
    assert yamlio.loads("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n")["d"] == {"b": 3, "c": 2}


def test_the_study_database_must_be_one_optuna_can_open_from_here(tmp_path, capsys):
    text = spec({"lr": 0.05})
    cases = {
        "sqlite:////nonexistent/dir/optuna.db": "search.storage: no folder /nonexistent/dir for "
        "the SQLite database; create it or fix the URL",
        f"sqlite:///{tmp_path}": f"search.storage: {tmp_path} is a folder, not a database file",
        "postgresql+nodriver://u@h/db": "search.storage: SQLAlchemy knows no driver "
        "'postgresql+nodriver'; e.g. postgresql://...",
    }
    for url, problem in cases.items():
        assert check(tmp_path, capsys, text, "--set", f"search.storage={url}") == (2, [problem])
    url = f"search.storage=sqlite:///{tmp_path}/optuna.db"
    assert check(tmp_path, capsys, text, "--set", url)[0] == 0


def test_momentum_milestones_and_a_name_an_option_would_take(tmp_path, capsys):
    argv = ["--set", "train.optim.momentum=2", "--set", "train.optim.milestones=[10, 2, 2]"]
    assert check(tmp_path, capsys, spec({"lr": 0.05}), "--set", "name=-x", *argv) == (
        2,
        [
            "name: give the sweep a name of letters, digits, '-', '_' or '.' that starts with a "
            "letter or digit, got '-x'",
            "train.optim.momentum: must be < 1, got 2",
            "train.optim.milestones: must increase, each epoch once, got [10.0, 2.0, 2.0]",
        ],
    )
    argv = ["--set", "train.optim.momentum=0.99", "--set", "train.optim.milestones=[2, 10]"]
    assert check(tmp_path, capsys, spec({"lr": 0.05}), "--set", "name=9x", *argv)[0] == 0
