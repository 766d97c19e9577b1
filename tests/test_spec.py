"""Sweep spec validation: every shipped spec is valid; bad specs fail early, naming the field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sweeps.spec import SpecError, from_dict_spec, trial_train_dict
from sweeps.spec_checks import load_spec, parse_spec
from trainers import yamlio

SPECS = sorted((Path(__file__).parent.parent / "sweeps" / "specs").glob("*.yaml"))


def good() -> dict:
    return {
        "name": "t",
        "train": {"data": {"name": "digits"}, "model": {"name": "small_cnn"}, "run": {"epochs": 1}},
        "space": {"name": "prune", "overrides": {"pnr": {"low": 1, "high": 20}, "lr": 0.05}},
        "budget": {"num_trials": 2},
    }


def errors(data: dict) -> str:
    with pytest.raises(SpecError) as e:
        parse_spec(data, check_tracking=True)
    return str(e.value)


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_spec_is_valid(path):
    data = yamlio.load_file(path)
    # Cluster specs name a server and a storage path that exist only on the cluster: validate
    # all but those.
    remote = (data.get("tracking") or {}).get("uri", "") or ""
    spec = load_spec(path, check_tracking=not remote.startswith("http"))
    assert spec.budget.num_trials >= 1
    assert from_dict_spec(spec.to_dict()) == spec  # what a trial rebuilds is the same spec


def test_shipped_specs_include_every_promised_kind():
    names = {p.stem for p in SPECS}
    assert {
        "digits_demo",
        "lenet5_prune",
        "lenet5_tiled_svd",
        "lenet5_tucker2",
        "lenet5_cp",
        "digits_weight_decay",
        "digits_uniform_noise",
        "digits_mixed",
        "resnet32_cifar10_gpu",
    } <= names


def test_good_spec_passes_and_maps_knobs():
    spec = parse_spec(good())
    d = trial_train_dict(spec, {"pnr": 7, "rate": 0.8, "lr": 0.05})
    assert d["compression"] == {"method": "prune", "pnr": 7, "params": {"rate": 0.8}}
    assert d["optim"]["lr"] == 0.05


def test_unknown_method():
    data = good()
    data["space"]["name"] = "prunning"
    assert "space.name: unknown search space 'prunning'" in errors(data)


def test_non_positive_pnr():
    data = good()
    data["space"]["overrides"]["pnr"] = {"low": 0, "high": 10, "log": False}
    assert "space.overrides.pnr = 0: compression.pnr: must be an integer >= 1" in errors(data)
    data["space"]["overrides"]["pnr"] = {"low": 0, "high": 10}  # pnr's space is log-scaled
    assert "space.overrides.pnr.low: a log range needs low > 0, got 0" in errors(data)


def test_rc_outside_unit_interval():
    data = good()
    data["space"] = {"name": "tucker2", "overrides": {"rc": {"low": 0.5, "high": 1.5}}}
    assert "space.overrides.rc = 1.5: compression.params: tucker2: rc must be in (0, 1]" in errors(
        data
    )


def test_tile_not_dividing_names_layer_and_fix():
    data = good()
    data["space"] = {"name": "tiled_svd", "overrides": {"tile": 7, "rank": 2}}
    msg = errors(data)
    assert (
        "space.overrides (tile=7, rank=2)" in msg
        and "conv2.weight" in msg
        and "tile sizes that divide it" in msg
    )


def test_missing_data_root():
    data = good()
    data["train"]["data"] = {"name": "fashion_mnist", "root": "/nonexistent/fmnist"}
    msg = errors(data)
    assert "train.data.root" in msg and "/nonexistent/fmnist" in msg


def test_unreachable_tracking_uri():
    data = good()
    data["tracking"] = {"uri": "http://127.0.0.1:9"}
    assert "tracking.uri" in errors(data)


def test_every_problem_listed_at_once():
    data = good()
    data["space"]["overrides"]["pnr"] = -1
    data["budget"] = {"num_trials": 0, "max_concurrent": 0}
    data["objective"] = {"metrics": ["acc"]}
    data["tracking"] = {"uri": "http://127.0.0.1:9"}
    data["bogus"] = 1
    msg = errors(data)
    assert "bogus: unknown field" in msg  # structure problems come first; then, once fixed:
    del data["bogus"]
    msg = errors(data)
    for field in (
        "budget.num_trials",
        "budget.max_concurrent",
        "objective.metrics",
        "tracking.uri",
    ):
        assert field in msg, field


def test_multi_objective_rules():
    data = good()
    data["objective"] = {"metrics": ["val_accuracy", "compression_ratio"]}
    data["scheduler"] = {"name": "asha"}
    assert "scheduler.name: asha stops trials on one metric" in errors(data)
    data["scheduler"] = {"name": "none"}
    data["search"] = {"sampler": "nsga2"}
    parse_spec(data)  # two metrics: a Pareto front for nsga2
    data["objective"] = {"metrics": ["compression_ratio"]}
    assert "search.sampler: nsga2 is multi-objective" in errors(data)


@pytest.mark.parametrize("metric", ["compression_ratio", "params", "macs"])
def test_asha_cannot_stop_trials_on_a_metric_known_only_at_the_end(metric):
    data = good()
    data["objective"] = {"metrics": [metric]}
    data["scheduler"] = {"name": "asha"}
    assert lines(data) == [
        f"scheduler.name: asha compares trials at each evaluation, and {metric} is known only "
        "at the end; use none, or an evaluation metric such as val_accuracy"
    ]
    data["scheduler"] = {"name": "none"}
    parse_spec(data)  # without a scheduler it is a fine objective


def lines(data: dict, **kwargs) -> list[str]:
    """The problems of a spec, one per line."""
    with pytest.raises(SpecError) as e:
        parse_spec(data, **kwargs)
    return e.value.problems


def test_a_wrong_type_hides_nothing_and_space_problems_do_not_hide_train_ones():
    data = good()
    data["budget"] = {"num_trials": "five", "max_concurrent": 0}
    data["space"] = {"name": "prunning"}
    data["train"]["optim"] = {"lr": float("nan"), "momentum": -1, "schedul": "cosine"}
    data["train"]["data"] = {"name": "fashion_mnist", "root": "/nonexistent/fmnist"}
    data["tracking"] = {"uri": "ftp://x"}
    found = lines(data)
    for start in (
        "budget.num_trials: expected int, got 'five'",
        "budget.max_concurrent: must be >= 1, got 0",
        "space.name: unknown search space 'prunning' (did you mean 'prune'?); valid: ",
        "train.optim.lr: must be a finite number, got nan",
        "train.optim.momentum: must be >= 0, got -1",
        "train.optim.schedul: unknown field (did you mean 'schedule'?)",
        "train.data.root: fashion_mnist: no directory with",  # the model-aware pass ran too
        "tracking.uri: scheme 'ftp' is not one MLflow can track to",
    ):
        assert any(line.startswith(start) for line in found), (start, found)
    assert all("\n" not in line for line in found)  # one line per problem


def test_missing_sections_say_what_is_missing():
    data = good()
    del data["train"]
    assert lines(data) == [
        "train: missing; the base training config of every trial, as for `compsweep train`"
    ]
    data = good()
    del data["train"]["run"]
    assert lines(data)[0].startswith("train.run: missing; how long to train (epochs or steps)")


def test_bad_ranges_are_named_not_raised():
    data = good()
    data["space"]["overrides"].update(
        {"lr": {"low": "a", "high": "b"}, "rate": {"low": 0.9, "high": 0.5}, "pnr": float("nan")}
    )
    assert lines(data) == [
        "space.overrides.pnr: must be a finite number, got nan",
        "space.overrides.lr.low: expected a number, got 'a'",
        "space.overrides.lr.high: expected a number, got 'b'",
        "space.overrides.rate: low 0.9 must not exceed high 0.5",
    ]


def test_numbers_as_people_write_them():
    text = """
name: wd
train: {data: {name: digits}, model: {name: small_cnn}, run: {steps: 1E2}, optim: {momentum: .5}}
space: {name: weight_decay, overrides: {theta: {choices: [1e-3, 1e-2]}, pnr: {low: 1, high: 1e1}, lr: 5e-2}}
budget: {num_trials: 2}
"""
    spec = parse_spec(yamlio.loads(text))
    assert spec.space.overrides["theta"] == {"choices": [0.001, 0.01]}
    assert trial_train_dict(spec, {"theta": 1e-3})["compression"]["params"]["theta"] == 0.001


def test_objective_directions_come_from_the_metric_catalogue():
    spec = parse_spec(good())
    assert spec.objective.metrics == ["val_accuracy"] and spec.objective.modes() == ["max"]
    data = good()
    data["objective"] = {"metrics": ["val_accuracy", "params"], "modes": ["max", "max"]}
    assert lines(data) == [
        "objective.modes: remove it: directions come from the metric catalogue "
        "(val_accuracy: max, params: min)"
    ]
    data["objective"] = {"metrics": ["test_accuracy", "e_w", "accuracy"]}
    found = lines(data)
    assert found[0].startswith(
        "objective.metrics[0]: 'test_accuracy' is measured on the test split, which is never used"
    )
    assert found[1].startswith("objective.metrics[1]: 'e_w' has no better direction")
    assert found[2].startswith(
        "objective.metrics[2]: unknown metric 'accuracy' (did you mean 'val_accuracy'?)"
    )


def test_a_validation_metric_needs_a_validation_split():
    data = good()
    data["train"]["data"]["val_fraction"] = 0
    assert lines(data) == [
        "train.data.val_fraction: is 0, but objective.metrics val_accuracy are measured on the "
        "validation split; hold out a fraction (e.g. 0.1) or choose other metrics"
    ]
    data["objective"] = {"metrics": ["compression_ratio"]}
    parse_spec(data)
    data["train"]["data"]["val_fraction"] = 1.0
    assert lines(data) == ["train.data.val_fraction: must be < 1, got 1.0"]


def test_tracking_uris_mlflow_cannot_use_are_refused_credentials_are_fine(tmp_path, monkeypatch):
    data = good()
    for uri, start in (
        ("ftp://x", "tracking.uri: scheme 'ftp' is not one MLflow can track to"),
        ("not a uri", "tracking.uri: 'not a uri' is a file path; MLflow 3 no longer tracks to"),
        ("http://", "tracking.uri: 'http://' names no host; write http://HOST:PORT"),
        ("http://h:port", "tracking.uri: 'http://h:port' is not a URI"),
        ("", "tracking.uri: empty; leave it out (null)"),
    ):
        data["tracking"] = {"uri": uri}
        assert lines(data, check_tracking=False)[0].startswith(start), uri
    for uri in ("http://user:secret@mlflow:5000", "postgresql+psycopg://u:p@db/mlflow",
                f"sqlite:///{tmp_path}/m.db"):  # fmt: skip
        data["tracking"] = {"uri": uri}
        assert parse_spec(data, check_tracking=False).tracking.uri == uri
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    data["tracking"] = {"uri": str(tmp_path / "mlruns")}
    parse_spec(data, check_tracking=False)


def test_storage_path_must_be_a_writable_folder_here(tmp_path):
    data = good()
    (tmp_path / "file").write_text("x")
    data["storage"] = {"path": str(tmp_path / "file")}
    assert lines(data) == [f"storage.path: {tmp_path / 'file'} is a file, not a folder"]
    data["storage"] = {"path": str(tmp_path / "file" / "results")}
    assert lines(data) == [
        f"storage.path: {tmp_path / 'file'} is a file, so {tmp_path / 'file' / 'results'} "
        "cannot be created"
    ]
    assert parse_spec(data, check_tracking=False).storage.path  # elsewhere (submit): not checked
    data["storage"] = {"path": str(tmp_path / "new" / "results")}
    parse_spec(data)
    assert not (tmp_path / "new").exists()  # checked, not created


def test_method_params_are_checked_and_named():
    data = good()
    data["method_params"] = {"prune": {"scope": "globl"}, "svd": {"rank": 2}, "prun": {}}
    found = lines(data)
    assert any(
        line.startswith("method_params.prun: unknown method 'prun' (did you mean 'prune'?)")
        for line in found
    )
    data["method_params"].pop("prun")
    found = lines(data)
    assert any(
        "method_params.prune (scope='globl')" in line and "scope must be" in line for line in found
    )
    assert "method_params.svd: space 'prune' never trains svd (it trains prune)" in found


# -------------------------------------------------------------------------------------------
# grid search


def grid(**overrides) -> dict:
    data = good()
    data["search"] = {"sampler": "grid"}
    data["space"]["overrides"] = {"pnr": {"choices": [2, 4]}, "rate": {"choices": [0.5, 0.9]},
                                  "lr": 0.05, **overrides}  # fmt: skip
    del data["budget"]
    return data


def test_grid_runs_each_cell_once_by_default():
    spec = parse_spec(grid())
    assert spec.budget.num_trials == 4 == math.prod([2, 2])
    assert from_dict_spec(spec.to_dict()).budget.num_trials == 4
    data = grid()
    data["budget"] = {"num_trials": 5}
    assert lines(data) == [
        "budget.num_trials: a grid runs each of its 4 cells once; leave num_trials out or set it "
        "to 4 (got 5)"
    ]


def test_grid_refuses_ranges_and_conditional_spaces():
    data = grid(rate={"low": 0.5, "high": 0.9})
    assert lines(data) == [
        "space.overrides.rate: searched over [0.5, 0.9]; give choices: [...] for a grid (or one "
        "fixed value)"
    ]
    data = grid(lr={"low": 0.01, "high": 0.1, "log": True})
    assert lines(data)[0].startswith("space.overrides.lr: searched over [0.01, 0.1] (log)")
    data = grid()
    data["space"] = {
        "name": "mixed",
        "overrides": {"method": {"choices": ["prune", "quantize"]}, "pnr": 2},
    }
    assert lines(data)[0].startswith(
        "space.overrides.method: space 'mixed' is conditional: method (prune, quantize) chooses "
        "between branches"
    )
    # one branch made explicit: a grid over its knobs
    data["space"]["overrides"] = {"method": "quantize", "pnr": {"choices": [2, 4]}, "lr": 0.05}
    assert parse_spec(data).budget.num_trials == 8  # pnr x bits (1, 2, 3, 4)


def test_objective_defaults_to_validation_accuracy_and_modes_follow_the_catalogue():
    spec = parse_spec(good())
    assert spec.objective.metrics == ["val_accuracy"]
    data = good()
    data["objective"] = {"metrics": ["val_loss", "compression_ratio", "params"]}
    assert parse_spec(data).objective.modes() == ["min", "max", "min"]


@pytest.mark.parametrize(
    "metric,why",
    [
        ("test_accuracy", "measured on the test split, which is never used to select"),
        ("e_w", "has no better direction"),
        ("accuracy", "unknown metric 'accuracy'"),
    ],
)
def test_objective_refuses_test_and_directionless_metrics(metric, why):
    data = good()
    data["objective"] = {"metrics": [metric]}
    msg = errors(data)
    assert f"objective.metrics[0]: '{metric}'" in msg or f"unknown metric '{metric}'" in msg
    assert why in msg and "val_accuracy" in msg  # the valid choices are listed


def test_a_validation_objective_needs_a_validation_split():
    data = good()
    data["train"]["data"]["val_fraction"] = 0
    assert "train.data.val_fraction: is 0, but objective.metrics val_accuracy" in errors(data)
