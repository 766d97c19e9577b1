"""`run.threads`: the torch thread count of `compsweep train`, of trials and of final training."""

from __future__ import annotations

import pytest
import torch
import yaml

from sweeps.cli import main
from trainers.loop import Trainer
from trainers.threads import available_cpus, run_threads

TINY = {
    "data": {"name": "synthetic", "batch_size": 16, "options": {"n_train": 64, "n_test": 32}},
    "model": {"name": "small_cnn"},
    "compression": {"method": "prune", "pnr": 4, "params": {"rate": 0.5},
                    "targets": {"min_params": 10}},
    "run": {"steps": 8, "device": "cpu", "eval_every": 1.0},
}  # fmt: skip


@pytest.fixture
def threads_seen(monkeypatch):
    """The torch thread count at every training step of any Trainer (a spy on pure logic)."""
    seen: list[int] = []
    step = Trainer._train_step

    def spy(self, x, y):
        seen.append(torch.get_num_threads())
        step(self, x, y)

    monkeypatch.setattr(Trainer, "_train_step", spy)
    before = torch.get_num_threads()
    yield seen
    torch.set_num_threads(before)


@pytest.mark.parametrize("configured", [1, 2])
def test_train_runs_with_the_configured_thread_count(tmp_path, threads_seen, configured):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    other = 2 if configured == 1 else 1
    torch.set_num_threads(other)  # the process starts elsewhere: the config must win
    assert main(["train", str(path), "--set", f"run.threads={configured}"]) == 0
    assert len(threads_seen) == 8 and set(threads_seen) == {configured}
    assert torch.get_num_threads() == other  # put back after the run


def test_train_defaults_to_one_thread_per_available_cpu(tmp_path, threads_seen):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    torch.set_num_threads(available_cpus() + 3)  # e.g. torch counting every core of the host
    assert main(["train", str(path)]) == 0
    assert set(threads_seen) == {available_cpus()}


def test_thread_defaults_and_bad_values():
    import os

    assert run_threads(3) == 3
    assert run_threads(None) == available_cpus() == len(os.sched_getaffinity(0))
    from trainers.config import ConfigError, parse_train_config

    with pytest.raises(ConfigError, match="run.threads"):
        parse_train_config(dict(TINY, run={**TINY["run"], "threads": 0}))


@pytest.mark.parametrize("configured,cpus,threads", [(None, 1, 1), (None, 2, 2), (None, 0.5, 1),
                                                     (3, 1, 3)])  # fmt: skip
def test_a_trial_defaults_to_the_cpus_it_holds(configured, cpus, threads):
    from sweeps.trial import set_trial_threads
    from trainers.config import parse_train_config

    cfg = parse_train_config(dict(TINY, run={**TINY["run"], "threads": configured}))
    set_trial_threads(cfg, cpus)
    assert cfg.run.threads == threads
    assert Trainer(cfg).threads == threads  # what fit() then sets
