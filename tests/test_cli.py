"""The `compsweep` command line: help, train, and early errors."""

from __future__ import annotations

import pytest
import yaml

from sweeps.cli import main

TINY = {
    "data": {"name": "synthetic", "batch_size": 16, "options": {"n_train": 64, "n_test": 32}},
    "model": {"name": "small_cnn"},
    "compression": {
        "method": "prune",
        "pnr": 4,
        "params": {"rate": 0.5},
        "targets": {"min_params": 10},
    },
    "run": {"steps": 16, "device": "cpu", "eval_every": 1.0},
}


@pytest.mark.parametrize(
    "command", ["train", "run", "submit", "resume", "status", "ui", "analyze", "best"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: compsweep " + command in capsys.readouterr().out


def test_train_prints_progress_and_final_metrics(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(path), "--set", "compression.pnr=8"]) == 0
    out = capsys.readouterr().out
    assert "-> 2 distortion events" in out and "final: val_accuracy" in out
    assert "test_accuracy" in out and "val_acc_pre" in out


def test_train_with_bad_config_lists_every_problem(tmp_path, capsys):
    bad = {
        **TINY,
        "optim": {"lr": -1.0, "schedule": "linear"},
        "compression": {**TINY["compression"], "pnr": 0},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    for field in ("optim.lr", "optim.schedule", "compression.pnr"):
        assert field in err


def test_run_check_rejects_a_bad_spec_before_starting_anything(tmp_path, capsys):
    spec = {"name": "x", "train": TINY, "space": {"name": "prune", "overrides": {"pnr": 0}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path)]) == 2
    assert "space.overrides.pnr = 0" in capsys.readouterr().err
