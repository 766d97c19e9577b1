"""The trial function leaves a reused worker process as it found it."""

from __future__ import annotations

import pytest
import torch

from sweeps import trial


def test_trial_restores_torch_process_settings_even_when_it_fails(monkeypatch):
    def failing_trial(config, sweep):
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        raise RuntimeError("boom")

    monkeypatch.setattr(trial, "_run_trial", failing_trial)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            trial.train_trial({}, {})
        assert torch.get_num_threads() == 2
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
