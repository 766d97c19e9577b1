"""Training-config validation: declarative sections, every problem at once with its dotted path,
names and knobs checked against the registries and signatures, and the model-aware pass."""

from __future__ import annotations

import json

import pytest

from trainers.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    check_train_config,
    load_train_config,
    parse_train_config,
    set_dotted,
    validate_train,
)
from trainers.model_checks import model_problems

RUN = {"run": {"steps": 10}}


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_train_config(data)
    return e.value.problems


def test_the_models_type_bound_and_name_every_field():
    found = problems(
        {
            "data": {"name": "digitz", "batch_size": 0, "val_fraction": 1.5},
            "optim": {"lr": float("inf"), "optimizer": "adamw", "momentum": True},
            "compression": {"pnr": "weekly", "targets": {"include": "conv2.weight"}},
            "run": {"steps": "five", "device": "gpu", "seed": -1},
            "extra": {},
        }
    )
    assert found == [
        "data.name: unknown dataset 'digitz' (did you mean 'digits'?); valid: digits, "
        "fashion_mnist, mnist, cifar10, imagenet, synthetic, synthetic_text, ptb",
        "data.batch_size: must be >= 1, got 0",
        "data.val_fraction: must be < 1, got 1.5",
        "optim.optimizer: unknown optimizer 'adamw' (did you mean 'adam'?); valid: sgd, adam",
        "optim.lr: must be a finite number, got inf",
        "optim.momentum: expected a number, got True",
        "compression.pnr: expected int, got 'weekly'; give the optimizer steps between "
        "distortions, or 'epoch' for one epoch",
        "compression.targets.include: expected a list, got 'conv2.weight'",
        "run.steps: expected int, got 'five'",
        "run.seed: must be >= 0, got -1",
        "run.device: unknown device 'gpu'; valid: auto, cpu, cuda, cuda:N",
        "extra: unknown field (valid: data, model, optim, compression, run)",
    ]


def test_nan_learning_rate_is_refused_not_trained():
    assert problems({"optim": {"lr": float("nan")}, **RUN}) == [
        "optim.lr: must be a finite number, got nan"
    ]


def test_integral_floats_count_as_integers_others_do_not():
    cfg = parse_train_config({"data": {"batch_size": 3.2e1}, "run": {"steps": 1e5}})
    assert (cfg.data.batch_size, cfg.run.steps) == (32, 100000)
    assert isinstance(cfg.run.steps, int)
    assert problems({"run": {"steps": 10.5}}) == ["run.steps: expected int, got 10.5"]
    assert problems({"compression": {"pnr": 2.5}, **RUN})[0].startswith(
        "compression.pnr: expected int, got 2.5"
    )


def test_empty_sections_are_defaults_and_the_run_is_required():
    cfg = parse_train_config({"data": None, "model": None, **RUN})
    assert cfg.data.name == "digits" and cfg.data.val_fraction == 0.1
    assert problems({}) == [
        "run: missing; how long to train (epochs or steps), seed, device and evaluations"
    ]
    assert problems({"run": {}}) == ["run: give exactly one of run.epochs or run.steps"]


def test_options_and_knobs_are_checked_against_their_signatures():
    found = problems(
        {
            "data": {
                "name": "synthetic",
                "options": {"n_trian": 5, "n_test": "x", "shape": [1, 8, 8]},
            },
            "model": {"name": "lstm_lm", "options": {"hidden": 2.5}},
            "compression": {"method": "prune", "pnr": 0, "params": {"rat": 0.5, "scope": 3}},
            **RUN,
        }
    )
    assert found == [
        "compression.pnr: must be an integer >= 1 (optimizer steps between distortions), got 0",
        "data.options.n_trian: unknown option of dataset 'synthetic' (did you mean 'n_train'?); "
        "its options are: shape, num_classes, n_train, n_test, data_seed",
        "data.options.n_test: expected int, got 'x'",
        "model.options.hidden: expected int, got 2.5",
        "compression.params.rat: unknown knob of prune (did you mean 'rate'?); its knobs are: "
        "rate, scope, schedule, initial_rate, ramp_start, ramp_end",
        "compression.params.rate: missing; prune needs a value for it",
        "compression.params.scope: expected text, got 3",
    ]
    # a knob of the right type but outside the method's own range: the method says so
    assert problems({"compression": {"method": "tucker2", "params": {"rc": 1.5}}, **RUN}) == [
        "compression.params: tucker2: rc must be in (0, 1], got 1.5"
    ]
    assert problems(
        {"compression": {"method": "weight_decay", "params": {"theta": float("nan")}}, **RUN}
    ) == ["compression.params.theta: must be a finite number, got nan"]


def test_check_train_config_sees_changes_after_parsing():
    cfg = parse_train_config({"compression": {"method": "prune", "params": {"rate": 0.5}}, **RUN})
    assert check_train_config(cfg) == []
    cfg.optim.lr = -1.0
    cfg.compression.params["rate"] = 2.0
    assert check_train_config(cfg) == [
        "optim.lr: must be > 0, got -1.0",
        "compression.params: prune: rate must be in [0, 1), got 2.0",
    ]


def test_to_dict_round_trips():
    cfg = parse_train_config({"compression": {"method": "nuclear", "pnr": "epoch"}, **RUN})
    assert parse_train_config(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_model_aware_pass_runs_for_every_sound_section():
    # data is sound (so its root is looked for) even though optim is not
    _, sections, found = validate_train(
        {"data": {"name": "fashion_mnist", "root": "/nonexistent"}, "optim": {"lr": "x"}, **RUN}
    )
    assert [str(p) for p in found] == ["optim.lr: expected a number, got 'x'"]
    assert "optim" not in sections and "data" in sections
    assert str(model_problems(sections)[0]).startswith("data.root: fashion_mnist: no directory")
    # data and model sound, compression too: a tile that divides no layer is named
    _, sections, found = validate_train(
        {
            "data": {"name": "digits"},
            "compression": {"method": "tiled_svd", "params": {"tile": 7, "rank": 2}},
            "run": {"steps": "x"},
        }
    )
    assert "run" not in sections
    names = [str(p) for p in model_problems(sections)]
    assert names and all(n.startswith("compression.params: tiled_svd: layer") for n in names)
    # a dataset marked for download is not looked for (nothing is downloaded while validating)
    _, sections, _ = validate_train(
        {"data": {"name": "mnist", "root": "/nonexistent", "download": True}, **RUN}
    )
    assert model_problems(sections) == []


def test_overrides_set_fields_and_name_what_they_cannot():
    data = {"optim": {"lr": 0.1}, "run": {"steps": 5}}
    assert apply_overrides(data, [("optim.momentum", 0.5), ("data.name", "synthetic")]) == []
    assert data["optim"] == {"lr": 0.1, "momentum": 0.5} and data["data"] == {"name": "synthetic"}
    found = [str(p) for p in apply_overrides(data, [("run.steps.x", 1), ("a..b", 1), ("", 1)])]
    assert found == [
        "--set run.steps.x: run.steps is 5, not a section with fields; set run.steps=VALUE, or a "
        "field of a section",
        "--set: 'a..b': a field path needs names between dots",
        "--set: '': a field path needs names between dots",
    ]
    with pytest.raises(ValueError, match="run.steps is 5"):
        set_dotted(data, "run.steps.x", 1)


def test_load_lists_file_and_override_problems_together(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: .nan}\nrun: {steps: 5}\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(path, {"run.steps.x": 1})
    assert e.value.problems == [
        "--set run.steps.x: run.steps is 5, not a section with fields; set run.steps=VALUE, or a "
        "field of a section",
        "optim.lr: must be a finite number, got nan",
    ]


def test_json_schema_lists_the_registries():
    schema = TrainConfig.model_json_schema()
    data = schema["$defs"]["DataConfig"]["properties"]
    assert "digits" in data["name"]["enum"] and data["val_fraction"]["exclusiveMaximum"] == 1
    assert schema["$defs"]["DataConfig"]["additionalProperties"] is False


def test_errors_survive_pickling_as_across_a_ray_boundary():
    # Ray pickles an exception raised in a trial and rebuilds it in the driver.
    import pickle
    from pathlib import Path

    from sweeps.lock import Holder, SweepBusy
    from sweeps.runner import SweepError
    from sweeps.spec import SpecError
    from trainers.divergence import TrainingDiverged

    long = "x" * 600
    for error in (
        ConfigError(["compression.pnr: 5000 exceeds the run's 80 steps", long], "trial config"),
        SpecError(["space.overrides.pnr: bad"], "spec.yaml"),
    ):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert back.problems == error.problems and back.source == error.source
        assert str(back) == str(error)
    diverged = pickle.loads(pickle.dumps(TrainingDiverged(37, "non-finite training loss")))
    assert (diverged.step, diverged.reason) == (37, "non-finite training loss")
    assert str(diverged) == "training diverged: non-finite training loss"
    sweep = pickle.loads(pickle.dumps(SweepError(["resources.gpus: no node has a GPU"])))
    assert sweep.problems == ["resources.gpus: no node has a GPU"]
    assert str(sweep) == "  - resources.gpus: no node has a GPU"
    busy = SweepBusy(Path("/s/x"), Holder("h", 42, 1.0, 2.0))
    back_busy = pickle.loads(pickle.dumps(busy))
    assert back_busy.holder == busy.holder and str(back_busy) == str(busy)


@pytest.mark.parametrize(
    "data",
    [
        {"name": "digits"},
        {"name": "digits", "limit_train": 100, "val_fraction": 0.25},
        {"name": "digits", "val_fraction": 0.999},
        {"name": "synthetic", "options": {"n_train": 50}, "val_fraction": 0.3},
        {"name": "synthetic_text", "limit_train": 7},
        {"name": "synthetic", "val_fraction": 0},
    ],
)
def test_train_samples_known_at_check_time_are_what_the_loader_gives(data):
    from trainers.data import load_dataset
    from trainers.model_checks import train_samples

    _, sections, found = validate_train({"data": data, **RUN})
    assert found == []
    d = sections["data"]
    splits = load_dataset(d.name, batch_size=1, root=None, download=False,
                          limit_train=d.limit_train, limit_test=None, device="cpu",
                          val_fraction=d.val_fraction, **d.options)  # fmt: skip
    assert train_samples(d) == len(splits.train)
