"""The tracking store a sweep is looked up in (``status``, ``analyze``, ``best``, ``stop``,
``resume``): one MLflow can use, that exists and answers, or exit 2 at once with one line,
its password masked, and nothing created."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from sweep_helpers import tiny_spec

from sweeps.cli import main
from sweeps.tracking import mlflow_client
from trainers import yamlio

PASSWORD = "s3cret-pw"
LOOKUPS = [["status"], ["status", "x"], ["analyze", "x"], ["best", "x"], ["stop", "x"],
           ["resume", "x"]]  # fmt: skip


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("command", LOOKUPS, ids=" ".join)
def test_an_unreachable_server_is_refused_within_seconds_without_its_password(
    here, capsys, command
):
    uri = f"http://user:{PASSWORD}@127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    code = main([*command, "--tracking-uri", uri])
    elapsed = time.monotonic() - t0
    out = capsys.readouterr()
    assert code == 2
    assert elapsed < 30  # MLflow's own client retries for minutes
    assert "cannot reach the MLflow tracking server at http://user:***@127.0.0.1:" in out.err
    assert PASSWORD not in out.err + out.out


@pytest.mark.parametrize("command", LOOKUPS, ids=" ".join)
def test_a_missing_sqlite_store_is_refused_and_not_created(here, capsys, command):
    code = main([*command, "--tracking-uri", "sqlite:///fresh.db"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no MLflow store at fresh.db: check --tracking-uri" in err
    assert files(here) == []


@pytest.mark.parametrize("command", [*LOOKUPS, ["ui"]], ids=" ".join)
def test_a_scheme_mlflow_cannot_track_to_is_one_clean_line(here, capsys, command):
    code = main([*command, "--tracking-uri", f"ftp://user:{PASSWORD}@host/x"])
    err = capsys.readouterr().err
    assert code == 2
    assert "scheme 'ftp' is not one MLflow can track to" in err
    assert "Exception" not in err and PASSWORD not in err


def test_a_sweep_id_is_not_looked_up_in_a_default_store_that_does_not_exist(here, capsys):
    assert main(["status", "x"]) == 2
    assert f"no MLflow store at {here / 'mlflow.db'}" in capsys.readouterr().err
    assert files(here) == []


def test_an_existing_store_is_looked_up(here, capsys):
    mlflow_client("sqlite:///kept.db")  # an empty store, as MLflow makes it
    assert main(["status", "--tracking-uri", "sqlite:///kept.db"]) == 1
    assert "no sweeps under compsweep_results or in MLflow at sqlite:///kept.db" in (
        capsys.readouterr().out
    )
    assert main(["status", "x", "--tracking-uri", "sqlite:///kept.db"]) == 2
    assert "no sweep 'x'" in capsys.readouterr().err


def test_run_check_masks_the_password_of_an_unreachable_server(here, capsys):
    uri = f"https://user:{PASSWORD}@127.0.0.1:{closed_port()}"
    (here / "spec.yaml").write_text(yamlio.dumps(tiny_spec("t", uri, str(here / "results"))))
    assert main(["run", "spec.yaml", "--check"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the MLflow tracking server at https://user:***@127.0.0.1:" in err
    assert PASSWORD not in err
