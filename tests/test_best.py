"""`compsweep best` and the sweep's closing table rank by each metric's catalogue direction;
test metrics, direction-less metrics, NaN/inf values and diverged trials never rank."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from sweeps import results
from sweeps.progress import best_rows
from sweeps.results import SweepRef, averaged_over, best_configs


def run(
    tid: str,
    status: str = "FINISHED",
    diverged: str | None = None,
    run_params: dict | None = None,
    **metrics: float,
):
    tags = {"compsweep.trial_id": tid}
    if diverged:
        tags |= {"compsweep.status": "diverged", "compsweep.status_reason": diverged}
    return SimpleNamespace(
        info=SimpleNamespace(run_id=f"run-{tid}", status=status),
        data=SimpleNamespace(metrics=metrics, tags=tags, params=run_params or {}),
    )


RUNS = [
    run("a", val_accuracy=0.90, test_accuracy=0.99, train_loss=0.30, params=500.0),
    run("b", val_accuracy=0.95, test_accuracy=0.80, train_loss=0.10, params=900.0),
    run("c", val_accuracy=0.85, test_accuracy=0.85, train_loss=0.50, params=100.0),
    run("nan", val_accuracy=math.nan, train_loss=math.nan, params=math.nan),
    run("inf", val_accuracy=math.inf, train_loss=-math.inf, params=-math.inf),
    run(
        "div",
        "FAILED",
        diverged="non-finite training loss (nan) at step 6; lower optim.lr",
        val_accuracy=0.99,
        train_loss=0.01,
        params=1.0,
    ),  # fmt: skip
    run("running", "RUNNING", val_accuracy=0.999, train_loss=0.001, params=1.0),
]


@pytest.fixture
def ref(monkeypatch, tmp_path) -> SweepRef:
    monkeypatch.setattr(results, "find_trial_runs", lambda *a: RUNS)
    monkeypatch.setattr(results, "_artifact_yaml", lambda client, run_id, path: {"from": run_id})
    return SweepRef(f"sqlite:///{tmp_path}/mlflow.db", "1", "sweep-x", "parent", ["val_accuracy"])


def trial_ids(best) -> list[str]:
    return [c["provenance"]["trial_id"] for c in best.configs]


def test_default_metric_is_the_objective_and_higher_accuracy_wins(ref):
    best = best_configs(ref, top=3)
    assert trial_ids(best) == ["b", "a", "c"]  # not "a", the best on test
    assert best.configs[0]["config"] == {"from": "run-b"}
    assert best.configs[0]["provenance"]["metrics"]["test_accuracy"] == 0.80  # shown, not used


def test_pareto_is_over_the_sweeps_objectives_and_skips_what_never_ranks(ref):
    # a, b, c trade val_accuracy against params; nan, inf, diverged and running never rank.
    ref.objective = ["val_accuracy", "params"]
    assert trial_ids(best_configs(ref, pareto=True)) == ["b", "a", "c"]
    ref.objective = ["val_accuracy"]  # one objective: accuracy against compression ratio
    with pytest.raises(ValueError, match="finite 'val_accuracy' and 'compression_ratio'"):
        best_configs(ref, pareto=True)  # no run reports a ratio: no front, not an empty file


def test_replicates_rank_by_their_mean_not_their_luckiest_seed(monkeypatch, ref):
    def seeded(tid, pnr, seed, acc):
        params = {"knob.pnr": str(pnr), "knob.seed": str(seed), "run.seed": str(seed)}
        return run(tid, run_params=params, val_accuracy=acc, test_accuracy=acc - 0.01)

    runs = [seeded("lucky", 10, 0, 0.95), seeded("lucky-1", 10, 1, 0.80),
            seeded("steady-1", 30, 1, 0.91), seeded("steady", 30, 0, 0.90)]  # fmt: skip
    monkeypatch.setattr(results, "find_trial_runs", lambda *a: runs)
    best = best_configs(ref, top=2)
    assert trial_ids(best) == ["steady", "lucky"]  # mean 0.905 beats 0.875; seed 0 stands for it
    top = best.configs[0]["provenance"]
    assert top["metrics"]["val_accuracy"] == pytest.approx(0.905)
    assert top["metrics"]["test_accuracy"] == pytest.approx(0.895)
    assert top["runs"] == [
        {"run_id": "run-steady", "trial_id": "steady", "seed": 0, "val_accuracy": 0.90},
        {"run_id": "run-steady-1", "trial_id": "steady-1", "seed": 1, "val_accuracy": 0.91},
    ]
    assert averaged_over(top) == "mean of 2 seeds"


def seeded(tid, seed, acc, lr=0.05, status="FINISHED", diverged=None, **metrics):
    params = {"knob.lr": str(lr), "knob.seed": str(seed), "run.seed": str(seed)}
    return run(tid, status, diverged, params, val_accuracy=acc, **metrics)


def test_a_configuration_with_a_seed_that_did_not_finish_is_left_out_not_ranked_on_the_rest(
    monkeypatch, ref
):
    why = "non-finite training loss (nan) at step 3; lower optim.lr"
    runs = [seeded(f"fine-{s}", s, 0.97) for s in range(4)]
    # lr=10 diverged on 3 of its 4 seeds; the survivor's value would top the ranking
    runs += [seeded(f"wild-{s}", s, 0.99, lr=10.0, status="FAILED", diverged=why) for s in range(3)]
    runs += [seeded("wild-3", 3, 0.999, lr=10.0)]
    runs += [seeded("slow-0", 0, 0.98, lr=0.5), seeded("slow-1", 1, 0.999, lr=0.5, status="RUNNING"),
             seeded("halted-0", 0, 0.98, lr=1.0),
             seeded("halted-1", 1, 0.98, lr=1.0, status="KILLED")]  # fmt: skip
    monkeypatch.setattr(results, "find_trial_runs", lambda *a: runs)
    best = best_configs(ref, top=5)
    assert trial_ids(best) == ["fine-0"]
    assert best.left_out == [
        ("lr=10 (trials wild-0, wild-1, wild-2, wild-3)", "3 of 4 seeds diverged"),
        ("lr=0.5 (trials slow-0, slow-1)", "1 of 2 seeds still running"),
        ("lr=1 (trials halted-0, halted-1)", "1 of 2 seeds stopped early by the scheduler, or killed"),
    ]  # fmt: skip
    assert [tid for tid, _ in best.diverged] == ["wild-0", "wild-1", "wild-2"]
    assert best.unranked == 2  # the running and the killed seed
    # with no configuration left whose every seed finished, nothing ranks, and it says why
    monkeypatch.setattr(results, "find_trial_runs", lambda *a: runs[4:8])
    with pytest.raises(
        ValueError, match=r"\(3 diverged; left out lr=10 .*: 3 of 4 seeds diverged\)"
    ):
        best_configs(ref)


def test_the_same_configuration_run_twice_with_one_seed_lists_both_runs(monkeypatch, ref):
    runs = [
        seeded("twice", 0, 0.92),
        seeded("twice-again", 0, 0.93),
        seeded("other", 0, 0.90, lr=1.0),
    ]
    monkeypatch.setattr(results, "find_trial_runs", lambda *a: runs)
    top = best_configs(ref, top=5).configs[0]["provenance"]
    assert top["metrics"]["val_accuracy"] == pytest.approx(0.925)
    assert [x["run_id"] for x in top["runs"]] == ["run-twice", "run-twice-again"]
    assert top["run_id"] in {x["run_id"] for x in top["runs"]}
    assert averaged_over(top) == "mean of 2 runs (1 seed)"
    assert (
        averaged_over({"runs": [{"seed": 0}, {"seed": 0}, {"seed": 1}]})
        == "mean of 3 runs (2 seeds)"
    )
    assert averaged_over({"runs": []}) == averaged_over({}) == ""


def test_the_pareto_set_lists_a_configuration_once_and_only_when_every_seed_finished(
    monkeypatch, ref
):
    runs = [seeded("acc", 0, 0.95, compression_ratio=2.0),
            seeded("acc-again", 0, 0.95, compression_ratio=2.0),  # drawn twice, same seed
            seeded("small", 0, 0.90, lr=1.0, compression_ratio=8.0),
            seeded("beaten", 0, 0.89, lr=2.0, compression_ratio=7.0),
            seeded("lucky-0", 0, 0.99, lr=3.0, compression_ratio=9.0),
            seeded("lucky-1", 1, 0.99, lr=3.0, status="FAILED", diverged="nan", compression_ratio=9.0),
            seeded("none", 0, 0.97, lr=4.0)]  # fmt: skip
    monkeypatch.setattr(results, "find_trial_runs", lambda *a: runs)
    best = best_configs(ref, pareto=True)
    assert trial_ids(best) == ["acc", "small"]
    assert best.metric == "val_accuracy"
    assert len(best.configs[0]["provenance"]["runs"]) == 2
    assert best.left_out == [("lr=3 (trials lucky-0, lucky-1)", "1 of 2 seeds diverged")]
    with pytest.raises(ValueError, match="pass one of --pareto and --metric val_loss"):
        best_configs(ref, pareto=True, metric="val_loss")


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--top", "0"],
            "--top must be >= 1 (how many of the best configurations to write), got 0",
        ),
        (["--top=-1"], "--top must be >= 1"),
        (["--top=-2"], "--top must be >= 1"),
        (
            ["--pareto", "--metric", "val_loss"],
            "--pareto takes the Pareto set of the sweep's objectives",
        ),
    ],
)
def test_best_refuses_a_top_below_one_and_a_metric_with_pareto(tmp_path, capsys, argv, message):
    from sweeps.cli import main

    out = tmp_path / "best.yaml"
    assert main(["best", "no-such-sweep", "-o", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "where,message",
    [
        ("folder", "-o {out}: is a folder"),
        ("missing/best.yaml", "folder {out_parent} does not exist"),
    ],
)
def test_best_checks_its_output_path_before_reading_the_sweep(tmp_path, capsys, where, message):
    from sweeps.cli import main

    out = tmp_path / where
    (tmp_path / "folder").mkdir()
    assert main(["best", "no-such-sweep", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message.format(out=out, out_parent=out.parent) in err
    assert "no-such-sweep" not in err  # refused before any lookup


def test_a_loss_ranks_lowest_first(ref):
    assert trial_ids(best_configs(ref, top=2, metric="train_loss")) == ["b", "a"]
    assert trial_ids(best_configs(ref, top=1, metric="params")) == ["c"]


def test_diverged_unfinished_and_non_finite_trials_never_rank_and_are_reported(ref):
    best = best_configs(ref, top=10)
    assert trial_ids(best) == ["b", "a", "c"]
    assert best.diverged == [("div", "non-finite training loss (nan) at step 6; lower optim.lr")]
    assert best.unranked == 3  # nan, inf, running


@pytest.mark.parametrize(
    "metric,why",
    [
        ("test_accuracy", "measured on the test split, which is never used to select"),
        ("e_w", "has no better direction"),
        ("acc", "unknown metric"),
    ],
)
def test_test_and_directionless_metrics_are_refused(ref, metric, why):
    with pytest.raises(ValueError, match=why) as e:
        best_configs(ref, metric=metric)
    assert "val_accuracy" in str(e.value)  # says what may rank


def test_the_closing_table_skips_diverged_and_non_finite_rows():
    rows = [
        {"trial": "a", "status": "TERMINATED", "val_accuracy": 0.9},
        {"trial": "b", "status": "TERMINATED", "val_accuracy": 0.95},
        {"trial": "nan", "status": "TERMINATED", "val_accuracy": math.nan},
        {"trial": "div", "status": "DIVERGED", "val_accuracy": 0.99},
        {"trial": "none", "status": "ERROR"},
    ]
    assert [r["trial"] for r in best_rows(rows, ["val_accuracy"], ["max"], 5)] == ["b", "a"]
    rows = [
        {"trial": t, "status": "TERMINATED", "val_loss": v} for t, v in (("x", 0.5), ("y", 0.2))
    ]
    assert [r["trial"] for r in best_rows(rows, ["val_loss"], ["min"], 5)] == ["y", "x"]


@pytest.mark.integration
def test_best_and_analyze_leave_out_a_configuration_with_diverged_seeds_in_a_real_mlflow_server(
    mlflow_server, tmp_path, capsys
):
    """The runs a grid with 4 replicates leaves where lr=10 diverged on 3 seeds, plus a
    configuration a random sampler drew twice with the same seed."""
    import uuid

    import yaml
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from sweeps.cli import main

    client = MlflowClient(mlflow_server.uri)
    exp = client.create_experiment(f"best-{uuid.uuid4().hex[:8]}")
    sweep_id = f"sweep-{uuid.uuid4().hex[:8]}"
    tags = {"compsweep.sweep_id": sweep_id}
    parent = client.create_run(exp, tags={**tags, "compsweep.role": "sweep"}).info.run_id

    def trial(tid, lr, seed, acc, diverged=False):
        run_tags = {**tags, "compsweep.role": "trial", "compsweep.trial_id": tid,
                    "mlflow.parentRunId": parent}  # fmt: skip
        if diverged:
            run_tags |= {"compsweep.status": "diverged",
                         "compsweep.status_reason": "non-finite training loss (nan) at step 5"}  # fmt: skip
        run_id = client.create_run(exp, tags=run_tags).info.run_id
        values = {"val_accuracy": acc, "test_accuracy": acc - 0.01, "mean_e_w": 1e-3,
                  "mean_e_w_per_pnr": 1e-4, "compression_ratio": 4.0}  # fmt: skip
        params = {"knob.lr": str(lr), "knob.pnr": "10", "knob.rate": "0.9",
                  "knob.seed": str(seed), "run.seed": str(seed)}  # fmt: skip
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                         metrics=[Metric(k, v, 0, 1) for k, v in values.items()])  # fmt: skip
        client.log_text(run_id, yaml.safe_dump({"optim": {"lr": lr}}), "config.yaml")
        client.set_terminated(run_id, status="FAILED" if diverged else "FINISHED")

    for s in range(4):
        trial(f"fine-{s}", 0.05, s, 0.97 + s / 1000)
        trial(f"wild-{s}", 10.0, s, 0.99, diverged=s < 3)
    trial("twice", 0.5, 0, 0.96)
    trial("twice-again", 0.5, 0, 0.95)
    client.set_terminated(parent)

    out = tmp_path / "br.yaml"
    assert main(["best", sweep_id, "--tracking-uri", mlflow_server.uri, "-o", str(out),
                 "--top", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert ("left out: lr=10 pnr=10 rate=0.9 (trials wild-0, wild-1, wild-2, wild-3): "
            "3 of 4 seeds diverged") in printed  # fmt: skip
    assert "[0] trial fine-0: mean of 4 seeds val_accuracy 0.9715" in printed
    assert "[1] trial twice: mean of 2 runs (1 seed) val_accuracy 0.9550" in printed
    configs = yaml.safe_load(out.read_text())["configs"]
    assert [c["config"]["optim"]["lr"] for c in configs] == [0.05, 0.5]
    assert [x["seed"] for x in configs[0]["provenance"]["runs"]] == [0, 1, 2, 3]
    assert [x["trial_id"] for x in configs[1]["provenance"]["runs"]] == ["twice", "twice-again"]

    assert main(["analyze", sweep_id, "--tracking-uri", mlflow_server.uri]) == 0
    printed = capsys.readouterr().out
    assert "trial wild-3 (run " in printed
    assert "): its configuration is left out: 3 of 4 seeds diverged" in printed
