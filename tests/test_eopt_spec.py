"""What ``sampler: eopt`` asks of a spec, and how ``--eopt-from`` refuses a spec without it."""

from __future__ import annotations

import pytest

from sweeps.cli import main
from sweeps.searchers import SAMPLERS
from sweeps.spec import SpecError
from sweeps.spec_checks import parse_spec
from trainers import yamlio


def spec(**extra) -> dict:
    data = {
        "name": "t",
        "train": {"data": {"name": "digits"}, "model": {"name": "small_cnn"}, "run": {"epochs": 1}},
        "space": {"name": "prune", "overrides": {"pnr": {"low": 1, "high": 20}, "lr": 0.05}},
        "budget": {"num_trials": 2},
        "search": {"sampler": "eopt"},
    }
    data.update(extra)
    return data


def problems(data: dict) -> str:
    with pytest.raises(SpecError) as e:
        parse_spec(data, check_tracking=False)
    return str(e.value)


def test_an_eopt_spec_builds_its_sampler_with_the_given_e_opt():
    s = parse_spec(spec(search={"sampler": "eopt", "e_opt": {"value": 1e-4, "low": 5e-5,
                                                             "high": 2e-4}}), check_tracking=False)  # fmt: skip
    sampler = SAMPLERS["eopt"](s)
    assert sampler.metric == "val_accuracy"
    assert sampler.given is not None and 10**sampler.given.x == pytest.approx(1e-4)


def test_eopt_needs_a_validation_objective_and_a_searched_pnr():
    text = problems(spec(objective={"metrics": ["compression_ratio", "val_accuracy"]}))
    assert "objective.metrics" in text and "must be a validation metric" in text
    fixed = spec(space={"name": "prune", "overrides": {"pnr": 10, "lr": 0.05}})
    assert "must search pnr over a range" in problems(fixed)


def test_a_given_e_opt_belongs_to_sampler_eopt_and_must_be_ordered():
    given = {"value": 1e-4, "low": 5e-5, "high": 2e-4}
    assert "guides sampler eopt only" in problems(spec(search={"sampler": "tpe", "e_opt": given}))
    bad = {"value": 1e-4, "low": 2e-4, "high": 3e-4}
    assert "low <= value <= high" in problems(spec(search={"sampler": "eopt", "e_opt": bad}))


def test_eopt_from_refuses_a_spec_whose_sampler_is_not_eopt(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yamlio.dumps(spec(search={"sampler": "tpe"})))
    assert main(["run", str(path), "--eopt-from", "some-sweep", "--check"]) == 2
    err = capsys.readouterr().err
    assert "the spec's sampler is 'tpe'" in err and "search.sampler" in err
    # submit refuses it here too, before contacting any cluster (nothing listens at port 9)
    submit = ["submit", str(path), "--address", "http://127.0.0.1:9", "--eopt-from", "sw"]
    assert main(submit) == 2
    assert "the spec's sampler is 'tpe'" in capsys.readouterr().err


def test_a_submitted_job_runs_with_the_same_eopt_from():
    from sweeps.submit import job_entrypoint

    entry = job_entrypoint("python", "s.yaml", [("budget.num_trials", 8)], "http://mlflow:5000",
                           ["MLFLOW_TRACKING_USERNAME"], eopt_from="earlier-sweep")  # fmt: skip
    assert entry[:5] == ["python", "-m", "sweeps.cli", "run", "s.yaml"]
    assert entry[entry.index("--eopt-from") + 1] == "earlier-sweep"
    assert "budget.num_trials=8" in entry and 'tracking.uri="http://mlflow:5000"' in entry
    assert "--eopt-from" not in job_entrypoint("python", "s.yaml", [], "u", [])
