"""Reading a sweep back from MLflow for the analysis: typed knob values, the figures, and
`compsweep analyze` end to end on trial runs written to a real `mlflow server` with MlflowClient
(the runs a sweep leaves: finished, diverged, stopped, run twice, logged without validation)."""

from __future__ import annotations

import csv
import math
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from synthetic_trials import E_OPT, wd_trials

from sweeps.analysis import analyze
from sweeps.analysis_plots import plot_all
from sweeps.results import knob_value

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-05", 1e-05),  # str(1e-05): the default θ lower bound
        ("1.0e-3", 1e-3),
        ("1E5", 1e5),
        (".5", 0.5),
        ("0.001", 0.001),
        ("2.5e-07", 2.5e-07),
        ("1e+16", 1e16),
        ("37", 37),
        ("-3", -3),
        ("True", True),
        ("False", False),
        ("None", None),
        ("inf", math.inf),
        ("-inf", -math.inf),
        ("[1, 2]", [1, 2]),
        ("['prune', 'svd']", ["prune", "svd"]),
        # categorical choices stay the text they are
        ("prune", "prune"),
        ("gradual", "gradual"),
        ("on", "on"),
        ("yes", "yes"),
        ("2020-01-01", "2020-01-01"),
        ("0x1f", "0x1f"),
        ("12:30", "12:30"),
        ("1_000", "1_000"),
        ("", ""),
    ],
)
def test_knob_values_keep_their_types(text, value):
    got = knob_value(text)
    assert got == value and type(got) is type(value)


def test_nan_knob_is_a_float_nan():
    v = knob_value("nan")
    assert isinstance(v, float) and math.isnan(v)


@given(st.floats(allow_nan=False) | st.integers() | st.booleans() | st.none())
def test_any_number_round_trips_through_its_str(v):
    got = knob_value(str(v))
    assert got == v and type(got) is type(v)


def _pngs(paths):
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000, p
    return sorted(p.name for p in paths)


def test_plots_are_written_and_the_pareto_plot_only_with_compression(tmp_path):
    a = analyze(wd_trials([1e-4, 1e-3, 1e-2, 1e-1]))
    assert _pngs(plot_all(a, tmp_path)) == [
        "accuracy_over_pnr.png",
        "accuracy_vs_e_w_per_pnr.png",
        "accuracy_vs_regularization_error.png",
    ]
    trials = wd_trials([1e-4, 1e-3])
    for t in trials:
        t.compression_ratio = 1.0 + t.pnr / 1000
    (tmp_path / "c").mkdir()
    assert "pareto_front.png" in _pngs(plot_all(analyze(trials), tmp_path / "c"))


def test_without_e_opt_no_regularization_error_plot(tmp_path):
    a = analyze(wd_trials([1e-1], pnrs=[1, 10, 100]))
    assert a.centre is None
    assert _pngs(plot_all(a, tmp_path)) == ["accuracy_over_pnr.png", "accuracy_vs_e_w_per_pnr.png"]


# ---------------------------------------------------------------------------------------------
# `compsweep analyze` against a real MLflow server


THETA_TEXT = {1e-4: "0.0001", 1e-3: "1.0e-3", 1e-2: "1e-02", 1e-1: "1E-1"}  # four notations


def _log_sweep(client, experiment_id: str, trials, extra=()) -> str:
    """A parent run and one child run per trial, as a sweep writes them."""
    sweep_id = f"sweep-{uuid.uuid4().hex[:8]}"
    tags = {"compsweep.role": "sweep", "compsweep.sweep_id": sweep_id}
    parent = client.create_run(experiment_id, tags=tags).info.run_id
    for t in trials:
        _log_trial(client, experiment_id, sweep_id, parent, t.trial_id,
                   {"pnr": str(t.knobs["pnr"]), "lr": "0.001", "method": "weight_decay",
                    "theta": THETA_TEXT[t.knobs["theta"]]},
                   {"val_accuracy": t.val_accuracy, "test_accuracy": t.test_accuracy,
                    "mean_e_w": t.mean_e_w, "mean_e_w_per_pnr": t.mean_e_w_per_pnr,
                    "compression_ratio": 1.0, "steps": 12000,
                    "val_loss": 1.0 - t.val_accuracy})  # fmt: skip
    for trial_id, knobs, metrics, status, run_tags in extra:
        _log_trial(
            client, experiment_id, sweep_id, parent, trial_id, knobs, metrics, status, run_tags
        )
    client.set_terminated(parent)
    return sweep_id


def _log_trial(client, experiment_id, sweep_id, parent, trial_id, knobs, metrics,
               status="FINISHED", tags=None) -> None:  # fmt: skip
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, tags={
        "compsweep.role": "trial", "compsweep.sweep_id": sweep_id, "compsweep.trial_id": trial_id,
        "mlflow.parentRunId": parent, **(tags or {})})  # fmt: skip
    params = [Param(f"knob.{k}", v) for k, v in knobs.items()] + [Param("run.seed", "0")]
    client.log_batch(run.info.run_id, params=params,
                     metrics=[Metric(k, v, 0, 1) for k, v in metrics.items()])  # fmt: skip
    client.set_terminated(run.info.run_id, status=status)


@pytest.mark.integration
def test_analyze_on_runs_in_a_real_mlflow_server(mlflow_server, tmp_path, capsys):
    from mlflow import MlflowClient

    from sweeps.cli import main
    from sweeps.results import load_trials, resolve_sweep

    client = MlflowClient(mlflow_server.uri)
    exp = client.create_experiment(f"analyze-{uuid.uuid4().hex[:8]}")
    trials = wd_trials([1e-4, 1e-3, 1e-2, 1e-1])
    again = trials[3]  # the same configuration run twice (a random sampler re-drew it)
    wd = {"method": "weight_decay", "lr": "0.001", "theta": "1.0e-3"}
    fine = {"val_accuracy": 0.9, "mean_e_w": 1e-5, "mean_e_w_per_pnr": 1e-6}
    extra = [
        (again.trial_id + "-again",
         {"pnr": str(int(again.pnr)), "lr": "0.001", "method": "weight_decay", "theta": "0.0001"},
         {"val_accuracy": again.val_accuracy, "test_accuracy": again.test_accuracy,
          "mean_e_w": again.mean_e_w, "mean_e_w_per_pnr": again.mean_e_w_per_pnr}, "FINISHED", {}),
        ("diverged", {**wd, "pnr": "7"}, {"val_accuracy": 0.1, "mean_e_w": 1.0, "mean_e_w_per_pnr": 0.1},
         "FAILED", {"compsweep.status": "diverged", "compsweep.status_reason": "non-finite loss at step 40"}),
        ("stopped", {**wd, "pnr": "8"}, fine, "KILLED", {"compsweep.status": "stopped"}),
        ("old-names", {**wd, "pnr": "9"}, {"accuracy": 0.99, "mean_e_w": 1e-5, "mean_e_w_per_pnr": 1e-6},
         "FINISHED", {}),
    ]  # fmt: skip
    sweep_id = _log_sweep(client, exp, trials, extra)

    loaded = {t.trial_id: t for t in load_trials(resolve_sweep(sweep_id, mlflow_server.uri))}
    for t in trials:
        got = loaded[t.trial_id].knobs
        assert got["theta"] == t.knobs["theta"] and type(got["theta"]) is float
        assert type(got["pnr"]) is int and got["lr"] == 0.001 and got["method"] == "weight_decay"
    assert loaded["diverged"].seed == 0

    out_dir = tmp_path / "analysis"
    assert (
        main(["analyze", sweep_id, "--tracking-uri", mlflow_server.uri, "--output", str(out_dir)])
        == 0
    )
    out = capsys.readouterr().out
    assert f"{len(trials) + 4} trial run(s) in MLflow" in out and "3 skipped" in out
    assert "1 identical run(s) (same knobs and seed) folded" in out
    assert "trial diverged (run" in out and "diverged: non-finite loss at step 40" in out
    assert "trial stopped (run" in out and "stopped early by the scheduler" in out
    assert "trial old-names (run" in out and "missing metric(s): val_accuracy" in out
    assert "from 3 strength group(s) with an interior optimum" in out
    assert "best at the edge pNR=3000 (the largest tried)" in out
    assert "12000 steps has fewer than 2 distortions at pNR 9000: train longer too" in out

    parent = client.search_runs(
        [exp], f"tags.`compsweep.sweep_id` = '{sweep_id}' and tags.`compsweep.role` = 'sweep'"
    )[0]
    m = parent.data.metrics
    assert m["e_opt"] == pytest.approx(E_OPT, rel=0.10)
    assert m["e_opt_low"] <= m["e_opt"] <= m["e_opt_high"] and m["e_opt_groups"] == 3
    # The logged counts are the printed ones: runs analyzed, and configurations after folding.
    analyzed = len(trials) + 1
    assert f"{analyzed} analyzed, 3 skipped" in out
    assert f"folded, so {analyzed - 1} configurations" in out
    assert m["analyzed_trials"] == analyzed and m["analyzed_configurations"] == analyzed - 1
    steps = {h.step for h in client.get_metric_history(parent.info.run_id, "analyzed_trials")}
    assert steps == {analyzed}
    names = {"report.txt", "trials.csv", "groups.csv", "accuracy_vs_e_w_per_pnr.png",
             "accuracy_vs_regularization_error.png", "accuracy_over_pnr.png"}  # fmt: skip
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    assert logged == {f"analysis/{n}" for n in names}  # no Pareto plot: nothing compresses
    assert {p.name for p in out_dir.iterdir()} == names
    with (out_dir / "groups.csv").open() as f:
        groups = {row["strength"]: row for row in csv.DictReader(f)}
    assert groups["method=weight_decay theta=0.0001"]["status"] == "used"
    edge = groups["method=weight_decay theta=0.1"]
    assert edge["status"] == "edge" and edge["reason"].startswith("best at the edge pNR=3000")
    with (out_dir / "trials.csv").open() as f:
        rows = {row["trial_id"]: row for row in csv.DictReader(f)}
    assert rows[again.trial_id]["folded"] == "1" and rows["diverged"]["status"] == "skipped"
    assert rows[again.trial_id]["metric"] == "val_accuracy"

    # Another validation metric, in its own direction: the loss (1 - accuracy here) is
    # minimized, so the same optima come out; trials without it are skipped by name.
    loss_dir = tmp_path / "by-loss"
    argv = ["analyze", sweep_id, "--tracking-uri", mlflow_server.uri, "--metric", "val_loss"]
    assert main([*argv, "--output", str(loss_dir)]) == 0
    out = capsys.readouterr().out
    assert "optima located on val_loss (lower is better)" in out
    assert "from 3 strength group(s) with an interior optimum" in out
    assert "missing metric(s): val_loss" in out  # the extra trials log no val_loss
    assert {"loss_vs_e_w_per_pnr.png", "loss_over_pnr.png"} <= {p.name for p in loss_dir.iterdir()}
    # logged apart from the sweep's own analysis (val_accuracy here), which stays as it was
    m = client.get_run(parent.info.run_id).data.metrics
    assert (
        m["e_opt.val_loss"] == pytest.approx(E_OPT, rel=0.10)
        and m["e_opt"] == parent.data.metrics["e_opt"]
    )
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis/val_loss")}
    assert "analysis/val_loss/report.txt" in logged
    assert main(["analyze", sweep_id, "--tracking-uri", mlflow_server.uri,
                 "--metric", "test_accuracy"]) == 2  # fmt: skip
    assert "never used to select" in capsys.readouterr().err


def test_the_analysis_metric_defaults_to_a_validation_objective():
    from sweeps.results import SweepRef, analysis_metric

    def ref(*objective):
        return SweepRef("sqlite:///m.db", "1", "s", "r", list(objective))

    assert analysis_metric(ref("val_loss")) == "val_loss"
    assert analysis_metric(ref("val_accuracy", "compression_ratio")) == "val_accuracy"
    assert analysis_metric(ref("compression_ratio", "val_loss")) == "val_accuracy"
    assert analysis_metric(ref("val_loss"), "val_acc_pre") == "val_acc_pre"


@pytest.mark.integration
def test_analyze_without_an_interior_optimum_logs_no_e_opt(mlflow_server, capsys):
    from mlflow import MlflowClient

    from sweeps.cli import main

    client = MlflowClient(mlflow_server.uri)
    exp = client.create_experiment(f"analyze-{uuid.uuid4().hex[:8]}")
    sweep_id = _log_sweep(client, exp, wd_trials([1e-1], pnrs=[1, 10, 100, 1000]))
    assert main(["analyze", sweep_id, "--tracking-uri", mlflow_server.uri]) == 0
    out = capsys.readouterr().out
    assert "This sweep cannot support an e_opt" in out
    assert "theta=0.1: tried pNR 1, 10, 100, 1000; add pNR 10000, 100000" in out
    parent = client.search_runs([exp], "tags.`compsweep.role` = 'sweep'")[0]
    assert parent.data.metrics["e_opt_groups"] == 0
    assert not {"e_opt", "e_opt_low", "e_opt_high"} & set(parent.data.metrics)


def test_analyze_refuses_bins_below_one(capsys):
    from sweeps.cli import main

    assert main(["analyze", "some-sweep", "--bins", "0"]) == 2
    assert "--bins must be >= 1, got 0" in capsys.readouterr().err


def test_the_spaces_pnr_range_comes_from_the_spec():
    from sweeps.results import space_pnr_range

    def spec(name, **overrides):
        return {"space": {"name": name, "overrides": overrides}}

    assert space_pnr_range(spec("prune", pnr={"low": 1, "high": 200})) == (1, 200)
    assert space_pnr_range(spec("prune", pnr={"choices": [40, 1, 10]})) == (1, 40)
    assert space_pnr_range(spec("prune", pnr=7)) == (7, 7)
    assert space_pnr_range(spec("funnel")) is None  # no pNR knob
    assert space_pnr_range({}) is None
