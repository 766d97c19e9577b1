"""``sampler: eopt`` end to end on a real Ray runtime and a real `mlflow server`: the pilot
runs, each finished trial's e_w reaches the Optuna study, and ``run --eopt-from`` an analyzed
sweep skips the pilot (with clear errors when it cannot)."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from sweep_helpers import sweep_runs, tiny_spec
from synthetic_trials import E_OPT, wd_trials
from test_results import _log_sweep
from test_sweeps import local_ray  # noqa: F401 - the module-scoped local Ray runtime

from sweeps.cli import main
from sweeps.eopt_sampler import E_W_ATTR, PHASE_ATTR, SOURCE_ATTR
from sweeps.records import SweepRecord
from sweeps.runner import run_sweep
from sweeps.spec_checks import parse_spec
from trainers import yamlio

# The local Ray runtime of tests/test_sweeps.py, once per module.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]


def _study(record: SweepRecord) -> optuna.Study:
    return optuna.load_study(study_name=record.sweep_id, storage=record.study_storage)


def test_eopt_sweep_pilots_then_transfers_e_opt(mlflow_server, tmp_path, capsys):
    results = tmp_path / "results"
    data = tiny_spec("eopt-e2e", mlflow_server.uri, str(results), trials=4,
                     search={"sampler": "eopt"})  # fmt: skip
    data["space"]["overrides"]["pnr"] = {"low": 1, "high": 12}
    first = run_sweep(parse_spec(data))
    assert first.outcome.exit_code() == 0

    # The pilot (2 strengths x up to 4 pNR) takes all 4 trials, and every finished trial's
    # final mean_e_w reached its Optuna trial, the same number MLflow holds.
    trials = _study(first).trials
    assert [t.user_attrs[PHASE_ATTR] for t in trials] == ["pilot"] * 4
    _, children = sweep_runs(mlflow_server.uri, "eopt-e2e", first.sweep_id)
    in_mlflow = sorted(r.data.metrics["mean_e_w"] for r in children)
    assert sorted(t.user_attrs[E_W_ATTR] for t in trials) == pytest.approx(in_mlflow)
    assert len({t.params["rate"] for t in trials}) == 2

    # A source sweep with a known e_opt, logged as a sweep logs it; not analyzed yet.
    client = MlflowClient(mlflow_server.uri)
    exp = client.create_experiment(f"eopt-source-{uuid.uuid4().hex[:8]}")
    source = _log_sweep(client, exp, wd_trials([1e-4, 1e-3, 1e-2]))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yamlio.dumps({**data, "budget": {"num_trials": 5, "max_concurrent": 2}}))
    capsys.readouterr()

    assert main(["run", str(spec_path), "--eopt-from", source]) == 2
    err = capsys.readouterr().err
    assert "no e_opt analysis" in err and f"compsweep analyze {source}" in err
    assert main(["run", str(spec_path), "--eopt-from", source,
                 "--set", "search.sampler=tpe"]) == 2  # fmt: skip
    assert "the spec's sampler is 'tpe'" in capsys.readouterr().err

    assert main(["analyze", source, "--tracking-uri", mlflow_server.uri]) == 0
    logged = client.get_run(_parent(client, exp)).data.metrics
    assert logged["e_opt_low"] <= E_OPT <= logged["e_opt_high"]
    assert main(["run", str(spec_path), "--eopt-from", source]) == 0

    second = _other_record(results, first.sweep_id)
    given = second.spec["search"]["e_opt"]
    assert given["source"] == source and given["value"] == pytest.approx(logged["e_opt"])
    trials = _study(second).trials
    phases = [t.user_attrs[PHASE_ATTR] for t in trials]
    assert len(trials) == 5 and "pilot" not in phases, phases
    # The first trials have no e_w to fit yet (probe); later ones aim at the given e_opt.
    guided = [t for t in trials if t.user_attrs[PHASE_ATTR] == "guided"]
    assert guided and all(t.user_attrs[SOURCE_ATTR] == "given" for t in guided), phases


def _parent(client: MlflowClient, experiment_id: str) -> str:
    runs = client.search_runs([experiment_id], "tags.`compsweep.role` = 'sweep'")
    return runs[0].info.run_id


def _other_record(results: Path, sweep_id: str) -> SweepRecord:
    folders = [p.parent for p in results.glob("*/compsweep.json")]
    records = [SweepRecord.load(str(f)) for f in folders]
    (other,) = [r for r in records if r.sweep_id != sweep_id]
    return other
