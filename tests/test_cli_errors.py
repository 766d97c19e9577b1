"""Bad input to the command line: one line per problem on stderr, exit code 2, no traceback
(unless --debug), nothing started — for files, --set lines, fields, URIs and paths."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from sweeps.cli import main
from trainers import yamlio

ROOT = Path(__file__).parent.parent
SPECS = sorted((ROOT / "sweeps" / "specs").glob("*.yaml"))
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
SPEC = {
    "name": "t",
    "train": TINY,
    "space": {"name": "prune", "overrides": {"pnr": {"low": 2, "high": 4}, "lr": 0.05}},
    "budget": {"num_trials": 2},
}


def run(capsys, *argv: str) -> tuple[int, list[str], str]:
    """(exit code, problem lines, stdout) of `compsweep ARGV`."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    problems = [line[4:] for line in out.err.splitlines() if line.startswith("  - ")]
    return code, problems, out.out


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(yamlio.dumps(SPEC))
    (tmp_path / "config.yaml").write_text(yamlio.dumps(TINY))
    return tmp_path


@pytest.mark.parametrize("command", [["run", "--check"], ["train", "--check"]])
@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "no such file"),
        (b"", "the file is empty; a "),
        (b"# only a comment\n", "the file is empty; a "),
        (b"name: caf\xe9\n", "not UTF-8 text (byte 9 is 0xe9); save it as UTF-8"),
        (b"- a\n- b\n", "expected a "),
        (b"name: [1,\n", "not valid YAML (line 2, column 1)"),
    ],
)
def test_files_that_cannot_be_read_are_one_problem(files, capsys, command, content, problem):
    path = files / "f.yaml"
    if content is not None:
        path.write_bytes(content)
    code, problems, _ = run(capsys, command[0], str(path), *command[1:])
    assert code == 2
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_set_lines_unknown_through_a_scalar_malformed(files, capsys):
    code, problems, _ = run(
        capsys, "run", "spec.yaml", "--check",
        "--set", "budget.num_trial=3",
        "--set", "budget.num_trials.x=3",
        "--set", "budget.max_concurrent=[1,",
        "--set", "no-equals-sign",
        "--set", "=3",
    )  # fmt: skip
    assert code == 2
    assert problems == [
        "--set budget.max_concurrent: '[1,': not valid YAML (line 1, column 4): expected the "
        "node content, but found '<stream end>'",
        "--set: 'no-equals-sign': give KEY=VALUE, e.g. --set optim.lr=0.01",
        "--set: '=3': give KEY=VALUE, e.g. --set optim.lr=0.01",
        "--set budget.num_trials.x: budget.num_trials is 2, not a section with fields; set "
        "budget.num_trials=VALUE, or a field of a section",
        "budget.num_trial: unknown field (did you mean 'num_trials'?)",
    ]


def test_a_spec_that_is_a_list_plus_set(files, capsys):
    (files / "list.yaml").write_text("- name: t\n")
    code, problems, _ = run(capsys, "run", "list.yaml", "--set", "budget.num_trials=3")
    assert code == 2 and len(problems) == 1 and problems[0].startswith("expected a sweep spec")


def test_every_problem_at_once_across_sections_and_kinds(files, capsys):
    code, problems, _ = run(
        capsys, "run", "spec.yaml", "--check",
        "--set", "budget.num_trials=five",
        "--set", "space.overrides.lr={low: a, high: b}",
        "--set", "train.optim.lr=.nan",
        "--set", "train.run.steps.x=1",
        "--set", "tracking.uri=ftp://x",
        "--set", "storage.path=spec.yaml",
    )  # fmt: skip
    assert code == 2
    assert problems == [
        "--set train.run.steps.x: train.run.steps is 16, not a section with fields; set "
        "train.run.steps=VALUE, or a field of a section",
        "budget.num_trials: expected int, got 'five'",
        "tracking.uri: scheme 'ftp' is not one MLflow can track to; use one of http, https, "
        "sqlite, postgresql, mysql, mssql, databricks (e.g. http://HOST:5000 or sqlite:///mlflow.db)",
        "space.overrides.lr.low: expected a number, got 'a'",
        "space.overrides.lr.high: expected a number, got 'b'",
        "train.optim.lr: must be a finite number, got nan",
        "storage.path: spec.yaml is a file, not a folder",
    ]


def test_not_a_uri_and_an_empty_or_trainless_spec_say_what_is_wrong(files, capsys):
    code, problems, _ = run(
        capsys, "run", "spec.yaml", "--check", "--set", "tracking.uri=not a uri"
    )
    assert code == 2 and problems[0].startswith("tracking.uri: 'not a uri' is a file path")
    (files / "empty.yaml").write_text("")
    code, problems, _ = run(capsys, "run", "empty.yaml")
    assert code == 2 and problems[0].startswith("the file is empty; a sweep spec is a mapping")
    (files / "notrain.yaml").write_text(
        yamlio.dumps({k: v for k, v in SPEC.items() if k != "train"})
    )
    code, problems, _ = run(capsys, "run", "notrain.yaml")
    assert (code, problems) == (
        2,
        ["train: missing; the base training config of every trial, as for `compsweep train`"],
    )


def test_numbers_with_exponents_are_numbers_in_files_and_set_lines(files, capsys):
    (files / "wd.yaml").write_text(
        "name: wd\ntrain: {data: {name: synthetic}, run: {steps: 1E2}}\n"
        "space: {name: weight_decay, overrides: {theta: {choices: [1e-3]}, lr: .05, pnr: 1e1}}\n"
    )
    assert run(capsys, "run", "wd.yaml", "--check", "--set", "budget.num_trials=4E0")[0] == 0
    code, _, out = run(capsys, "train", "config.yaml", "--check", "--set", "optim.lr=5e-2")
    assert (code, out) == (0, "config.yaml: valid\n")


def test_train_refuses_nan_and_inf_learning_rates(files, capsys):
    for value in (".nan", ".inf", "-.inf"):
        code, problems, out = run(capsys, "train", "config.yaml", "--set", f"optim.lr={value}")
        assert code == 2 and problems[0].startswith("optim.lr: must be ") and "final" not in out


def test_checkpoint_paths_are_checked_before_training(files, capsys):
    code, problems, out = run(capsys, "train", "config.yaml", "--checkpoint", "/missing/dir/x.pt")
    assert code == 2 and out == ""
    assert problems == [
        "--checkpoint /missing/dir/x.pt: folder /missing/dir does not exist; create it or choose another"
    ]
    (files / "garbage.pt").write_text("garbage")
    code, problems, out = run(capsys, "train", "config.yaml", "--checkpoint", "garbage.pt")
    assert (
        code == 2
        and "final" not in out
        and problems[0].startswith("not a checkpoint: torch cannot read it (")
    )
    assert (files / "garbage.pt").read_text() == "garbage"  # not overwritten by a first save
    import torch

    torch.save({"config": {}, "state_dict": {}}, files / "saved.pt")  # a --save file
    code, problems, _ = run(capsys, "train", "config.yaml", "--checkpoint", "saved.pt")
    assert code == 2 and problems == [
        "not a training checkpoint (a --save file or another program's?)"
    ]
    code, problems, _ = run(capsys, "train", "config.yaml", "--checkpoint", str(files))
    assert code == 2 and problems[0].endswith("is a folder; give a file path, e.g. run.pt")
    code, problems, out = run(capsys, "train", "config.yaml", "--save", "/missing/w.pt")
    assert (code, out) == (2, "")
    assert problems == [
        "--save /missing/w.pt: folder /missing does not exist; create it or choose another"
    ]


def test_a_checkpoint_of_another_model_does_not_fit(files, capsys):
    assert run(capsys, "train", "config.yaml", "--checkpoint", "a.pt", "--steps", "8")[0] == 0
    code, problems, _ = run(
        capsys, "train", "config.yaml", "--checkpoint", "a.pt", "--set", "model.name=lenet300100"
    )
    assert code == 2 and problems[0].startswith("does not fit this config (")


def test_debug_shows_the_traceback(files, capsys):
    assert main(["--debug", "run", "spec.yaml", "--set", "budget.num_trials=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "budget.num_trials: must be >= 1" in err
    assert main(["train", "config.yaml", "--debug", "--set", "optim.lr=0"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_not_bad_input(files, capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr("sweeps.spec_checks.spec_problems", broken)
    assert main(["run", "spec.yaml", "--check"]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == "error: RuntimeError: disk on fire second line (run with --debug for the traceback)\n"
    )


def test_schema_prints_json_schemas_the_shipped_files_satisfy(capsys):
    assert main(["schema", "spec"]) == 0
    spec_schema = json.loads(capsys.readouterr().out)
    assert main(["schema", "config"]) == 0
    config_schema = json.loads(capsys.readouterr().out)
    for path in SPECS:
        jsonschema.validate(yamlio.load_file(path), spec_schema)
    for path in (ROOT / "trainers" / "configs").glob("*.yaml"):
        jsonschema.validate(yamlio.load_file(path), config_schema)
    bad = {**yamlio.load_file(SPECS[0]), "search": {"sampler": "grd"}}
    with pytest.raises(jsonschema.ValidationError, match="grd"):
        jsonschema.validate(bad, spec_schema)


def test_only_the_yaml_reader_parses_yaml():
    """One YAML loading function for the whole project: every read goes through yamlio."""
    offenders = []
    for package in ("trainers", "sweeps", "search_spaces"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if path.name != "yamlio.py" and re.search(
                r"yaml\.(safe_)?load\(|yaml\.full_load", text
            ):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


@pytest.mark.parametrize(
    "best, argv, problem",
    [
        ({"configs": {"config": TINY}}, [], "configs: expected a list of {config, provenance}"),
        ({"configs": [{"config": TINY, "provenance": None}]}, ["--index", "3"], "--index 3: "),
        ({"configs": [{"config": TINY, "provenance": 5}]}, [], "configs[0].provenance: expected"),
        ({"configs": [{"config": {**TINY, "run": {"steps": 0}}}]}, [], "run.steps: must be >= 1"),
    ],
)
def test_best_files_are_checked_before_final_training(files, capsys, best, argv, problem):
    (files / "best.yaml").write_text(yamlio.dumps(best))
    code, problems, out = run(capsys, "train", "best.yaml", *argv)
    assert (code, out) == (2, "") and problems[0].startswith(problem), problems


@pytest.mark.parametrize(
    "setting, problem",
    [
        # synthetic n_train 64, limit_train first, then 10% held out: 58 samples, 3 batches of 16
        ("compression.pnr=5000", "compression.pnr: 5000 exceeds the run's 16 steps"),
        ("data.batch_size=1e9", "data.batch_size: 1000000000 exceeds the 58 training samples"),
        ("data.limit_train=5", "data.batch_size: 16 exceeds the 4 training samples"),
        ("data.val_fraction=0.9", "data.batch_size: 16 exceeds the 6 training samples"),
    ],
)
@pytest.mark.parametrize("check", [True, False])
def test_a_run_too_short_for_its_pnr_or_batch_is_bad_input(files, capsys, setting, problem, check):
    code, problems, out = run(capsys, "train", "config.yaml", "--set", setting,
                              *(["--check"] if check else []))  # fmt: skip
    assert code == 2 and len(problems) == 1 and problems[0].startswith(problem), problems
    assert "valid" not in out


def test_a_pnr_range_longer_than_the_run_is_named_at_check(files, capsys):
    spec = {**SPEC, "space": {"name": "prune", "overrides": {"pnr": {"low": 2, "high": 5000}}}}
    (files / "long.yaml").write_text(yamlio.dumps(spec))
    code, problems, _ = run(capsys, "run", "long.yaml", "--check")
    assert code == 2
    high = [
        p for p in problems if p.startswith("space.overrides.pnr = 5000: compression.pnr: 5000")
    ]
    assert len(high) == 1 and "exceeds the run's 16 steps" in high[0], problems
    assert not [p for p in problems if p.startswith("space.overrides.pnr = 2:")]
    spec = {**SPEC, "space": {"name": "prune", "overrides": {"pnr": 5000, "lr": 0.05}}}
    spec["train"] = {**TINY, "data": {**TINY["data"], "batch_size": 1e9}}
    (files / "fixed.yaml").write_text(yamlio.dumps(spec))
    code, problems, _ = run(capsys, "run", "fixed.yaml", "--check")
    assert code == 2
    assert problems == [
        "train.data.batch_size: 1000000000 exceeds the 58 training samples (after "
        "data.limit_train and the validation hold-out), so an epoch has no batch; lower "
        "data.batch_size or raise data.limit_train"
    ]


def _closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["ftp://nowhere", "closed"])
def test_submit_to_a_wrong_or_unreachable_address_is_one_line(files, capsys, address):
    address = f"http://127.0.0.1:{_closed_port()}" if address == "closed" else address
    code = main(["submit", "spec.yaml", "--address", address, "--no-wait",
                 "--set", "tracking.uri=http://127.0.0.1:9", "--set", f"storage.path={files}"])  # fmt: skip
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1, out.err
    assert errors[0].startswith(f"error: --address {address}: ")
    expected = "expected the URL" if address.startswith("ftp") else "no Ray dashboard answers"
    assert expected in errors[0]
    assert "Traceback" not in out.err + out.out and "Ray job" not in out.out


def test_the_stop_line_follows_a_submission_only(capsys):
    import sys

    from sweeps.submit import _run_submission

    ok = "print('Uploading'); print(\"Job 'j' submitted successfully\"); print('tail')"
    assert _run_submission([sys.executable, "-c", ok], "Ray job j; stop") == 0
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "Job 'j' submitted successfully",
        "Ray job j; stop",
        "tail",
    ]
    bad = "import sys; print('Traceback ...'); sys.exit('ConnectionError: no cluster')"
    assert _run_submission([sys.executable, "-c", bad], "Ray job j; stop") == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == "error: the Ray job was not submitted: ConnectionError: no cluster\n"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "cfg.yaml", "--epochs", "1", "--steps", "10"], "not allowed with argument"),
        (["ui", "--port", "99999"], "'99999' is not a TCP port (1-65535)"),
        (["ui", "--port", "-5"], "'-5' is not a TCP port (1-65535)"),
    ],
)
def test_conflicting_or_impossible_flags_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
