"""A trial whose configuration the trainer refuses fails once, with the problem as its reason,
on a real Ray runtime and a real `mlflow server`: retrying could not fix it."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from sweep_helpers import sweep_runs, tiny_spec
from test_sweeps import local_ray  # noqa: F401 - the module-scoped local Ray runtime

from sweeps.runner import run_sweep
from sweeps.spec import from_dict_spec

# The local Ray runtime of tests/test_sweeps.py, once per module.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]


def test_a_refused_configuration_fails_once_with_its_reason(mlflow_server, tmp_path, capsys):
    data = tiny_spec("refused", mlflow_server.uri, str(tmp_path / "results"), trials=2, steps=40)
    data["space"]["overrides"] = {"pnr": 400, "lr": 0.05}
    # Spec validation would refuse this pNR (the data's size is known); a spec taken as valid
    # stands for a dataset whose size only loading it tells, where the trainer finds it.
    record = run_sweep(from_dict_spec(data))
    text = capsys.readouterr().out

    _, children = sweep_runs(mlflow_server.uri, "refused", record.sweep_id)
    assert len(children) == 2
    for r in children:
        assert r.info.status == "FAILED"
        assert r.data.tags["compsweep.status"] == "failed"
        reason = r.data.tags["compsweep.status_reason"]
        assert reason.startswith("invalid configuration: compression.pnr: 400 exceeds the run's")
        assert f"trial {r.data.tags['compsweep.trial_id']} FAILED: {reason}" in text
        assert not MlflowClient(mlflow_server.uri).get_metric_history(r.info.run_id, "e_w")
    assert "retrying" not in text
    assert "2/2 trials: 2 failed" in text
    assert record.outcome.exit_code() == 1
    # Ray's error file would hold a traceback only for a trial that raised: none did.
    assert not list((tmp_path / "results").glob("*/*/error.txt"))
