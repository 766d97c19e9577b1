"""Every registered compression method, through the same checks (Composer style).

:data:`SETTINGS` holds one small canonical setting per method of
``trainers.distortions.REGISTRY``; the tests are parametrized over the registry itself, so a new
method fails here until it has a row, and then gets every check at once: its config validates,
its resume is bit-exact, its exported model computes what the trained model does, its search
space asks for knobs it takes, and it reports its compression.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from resume_check import assert_resume_is_exact, fit

from search_spaces import SPACES, branches
from sweeps.spec import KNOB_PATHS
from trainers.config import ConfigError, check_train_config, knob_problems
from trainers.distortions import REGISTRY
from trainers.export import export
from trainers.model_checks import model_problems
from trainers.serialize import load_exported, save_exported

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 16  # the regularized part of the run; resume stops halfway
PNR = 4


@dataclass(frozen=True)
class Setting:
    """A method's canonical small setting on ``tiny_config`` (small_cnn, 8x8 synthetic data).

    Attributes:
        params: the method's knobs (``compression.params``).
        compresses: whether the setting stores fewer numbers than the dense model (False only
            for methods that regularize without compressing: the row says why).
        targets: ``compression.targets`` instead of the default (conv2 and fc).
    """

    params: dict[str, Any]
    compresses: bool = True
    targets: dict[str, Any] = field(default_factory=lambda: {"min_params": 10})


SETTINGS: dict[str, Setting] = {
    # Decay and noise regularize: every weight stays a dense 32-bit number.
    "weight_decay": Setting({"theta": 0.01}, compresses=False),
    "uniform_noise": Setting({"a": 0.05}, compresses=False),
    "gaussian_noise": Setting({"eta": 0.01}, compresses=False),
    "prune": Setting({"rate": 0.6, "schedule": "gradual"}),
    "quantize": Setting({"bits": 2}),
    "svd": Setting({"rank": 2}),
    # Tiles must divide every target's lowered matrix: conv2 is 16×72 (fc's 10 rows are not).
    "tiled_svd": Setting({"tile": 8, "rank": 2}, targets={"include": ["conv2.weight"]}),
    "tucker2": Setting({"rc": 0.5}),
    "cp": Setting({"ratio": 0.1, "iters": 5}),
    "nuclear": Setting({"tau": 2.0, "energy": 90.0}),
    "funnel": Setting({"lam": 0.5, "threshold": 0.9, "finetune_epochs": 0.5}),
}

METHODS = REGISTRY.names()


def setting(name: str) -> Setting:
    if name not in SETTINGS:
        pytest.fail(
            f"compression method {name!r} is registered but has no canonical setting: add a "
            f"row for it to SETTINGS in {__name__}.py (small knobs that compress, or "
            "compresses=False with the reason)"
        )
    return SETTINGS[name]


@pytest.fixture
def canonical_config(tiny_config):
    """``canonical_config(name, **knobs)``: the method's training config, pNR 4, 16 steps,
    cosine lr with momentum (so resume must restore the schedule and the optimizer state)."""

    def config(name: str, **params: Any):
        s = setting(name)
        return tiny_config(
            compression={
                "method": name,
                "params": {**s.params, **params},
                "pnr": PNR,
                "targets": s.targets,
            },
            run={"steps": STEPS, "eval_every": 0.5},
            optim={"schedule": "cosine", "lr": 0.05, "momentum": 0.9},
        )

    return config


_RUNS: dict[str, Any] = {}


@pytest.fixture
def fitted(canonical_config):
    """``fitted(name)``: the canonical run of a method and its final metrics, trained once
    for the whole module."""

    def get(name: str):
        if name not in _RUNS:
            _RUNS[name] = fit(canonical_config(name))
        return _RUNS[name]

    return get


def test_every_registered_method_has_a_canonical_setting():
    missing = [name for name in METHODS if name not in SETTINGS]
    assert not missing, (
        f"registered compression methods without a canonical setting: {missing}; add a row "
        f"for each to SETTINGS in {__name__}.py"
    )
    stale = sorted(set(SETTINGS) - set(METHODS))
    assert not stale, f"SETTINGS rows for methods that are not registered: {stale}"


@pytest.mark.parametrize("name", METHODS)
def test_canonical_config_validates(name, canonical_config):
    cfg = canonical_config(name)
    assert cfg.compression.method == name
    assert check_train_config(cfg) == []
    sections = {k: getattr(cfg, k) for k in ("data", "model", "compression", "run")}
    assert model_problems(sections) == []
    # A misspelled knob is refused with the method's knobs listed.
    with pytest.raises(ConfigError, match="its knobs are: "):
        canonical_config(name, no_such_knob=1)


@pytest.mark.parametrize("name", METHODS)
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(
    name, canonical_config, fitted, tmp_path
):
    assert_resume_is_exact(canonical_config(name), tmp_path, STEPS // 2, full=fitted(name))


@pytest.mark.parametrize("name", METHODS)
def test_exported_model_computes_what_the_trained_model_does(name, fitted, tmp_path):
    """A distortion's export restructures the final weights ``h(w)``; a phased method's model
    already has its compressed structure. Either way it is saved, loaded and compared."""
    trainer, _ = fitted(name)
    model = copy.deepcopy(trainer.model).eval()
    if trainer.distortion is not None:
        exported = export(model, trainer.distortion, list(trainer.targets)).eval()
    else:
        assert trainer.method is not None and trainer.method.state_dict() is not None
        exported = model
    save_exported(exported, tmp_path / "model.pt")
    loaded = load_exported(tmp_path / "model.pt")
    x = torch.randn(8, *trainer.info.input_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
        scale = expected.abs().max().item()
        torch.testing.assert_close(exported(x), expected, atol=1e-4 * scale, rtol=0)
        torch.testing.assert_close(loaded(x), exported(x), atol=1e-6 * scale, rtol=0)


@pytest.mark.parametrize("name", METHODS)
def test_search_space_asks_for_knobs_the_method_takes(name):
    """The method's space exists under its name; in every branch, each knob that is not a
    config path (lr, pnr, ...) is a knob of the method, and both ends of every range make a
    valid setting."""
    assert name in SPACES, f"no search space named {name!r}: add one to search_spaces/"
    knobs = set(REGISTRY.options(name))
    for branch in branches(name):
        own = {k: d for k, d in branch.items() if k not in KNOB_PATHS}
        assert own, f"space {name!r} searches none of the method's knobs"
        assert set(own) <= knobs, f"space {name!r} asks for {sorted(set(own) - knobs)}"
        for end in ("low", "high"):
            params = {
                k: d["value"] if d["kind"] == "fixed" else d.get("taken", d.get(end))
                for k, d in own.items()
            }
            assert knob_problems(name, params) == [], (end, params)


@pytest.mark.parametrize("name", METHODS)
def test_compression_is_reported(name, fitted):
    """A method that compresses must say so through its storage count (``stored_params``, or a
    phased method's smaller model): the canonical setting has compression ratio > 1."""
    _, final = fitted(name)
    ratio = final["params_dense"] / final["params"]
    assert final["compression_ratio"] == pytest.approx(ratio)
    if setting(name).compresses:
        assert final["params"] < final["params_dense"], final
    else:
        assert final["params"] == final["params_dense"] and final["compression_ratio"] == 1.0
