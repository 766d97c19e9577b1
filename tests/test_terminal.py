"""What a person sees: knobs with readable precision, trial runs named by what they are, a live
view on a terminal and plain lines elsewhere, no line of Ray, Optuna or MLflow in a real
sweep's output, and a `compsweep ui` that starts light and never creates a store.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sweeps.cli import main
from sweeps.naming import (
    browse_hint,
    fmt_knob,
    label_of_run_name,
    run_name,
    trial_label,
    tune_trial_name,
)
from sweeps.progress import SweepProgress, duration_text, eta_seconds, knob_text, wants_live
from sweeps.spec import from_dict_spec

COMPSWEEP = str(Path(sys.executable).parent / "compsweep")
RUN_NAME = re.compile(r"^prune r=\d\.\d\d pnr=\d+ · t\d\d$")


# -- knobs, names, links ------------------------------------------------------------------------


def test_knobs_print_with_three_significant_digits_also_from_mlflow_strings():
    result = {"knob.rate": 0.5392081848656933, "knob.pnr": 13, "knob.lr": 1e-05, "epoch": 2.0}
    assert knob_text(result) == "lr=1e-05 pnr=13 rate=0.539"
    # MLflow returns params as strings: the closing table reads them back from there.
    assert knob_text({"knob.rate": "0.5392081848656933", "knob.opt": "sgd"}) == "opt=sgd rate=0.539"
    assert [fmt_knob(v) for v in (0.05, 2.0, 1234.5678, True, float("nan"))] == [
        "0.05", "2", "1.23e+03", "True", "nan",
    ]  # fmt: skip


def test_trial_runs_are_named_by_method_searched_knobs_and_number():
    trial = SimpleNamespace(trial_id="ab12cd34", experiment_tag="3_lr=0.05,pnr=13,rate=0.8")
    name = tune_trial_name(trial)
    assert name == "t03-ab12cd34" and trial_label(name) == "t03"
    run = run_name("prune", {"knob.rate": 0.7999, "knob.pnr": 13, "knob.lr": 0.05}, "t03", {"lr"})
    assert run == "prune r=0.80 pnr=13 · t03"  # lr is pinned by the spec: not in the name
    assert label_of_run_name(run) == "t03" and label_of_run_name("sweep-2026") == ""
    # a mixed space searches the method itself
    assert run_name("none", {"method": "quantize", "bits": 4, "pnr": 7}, "t12") == (
        "quantize bits=4 pnr=7 · t12"
    )
    # a trial Tune numbered nothing keeps its id
    assert tune_trial_name(SimpleNamespace(trial_id="x1", experiment_tag="")) == "x1"


def test_every_printed_link_opens_the_runs_view():
    for hint in (
        browse_hint("sqlite:////tmp/x/mlflow.db", "4"),
        browse_hint("http://mlflow:5000/", "4"),
        browse_hint("https://m.example/", "4", "abc"),
    ):
        assert hint.endswith("?workflowType=machine_learning") and "/#/experiments/4/runs" in hint
    assert "compsweep ui" in browse_hint("sqlite:////tmp/x/mlflow.db", "4")
    assert browse_hint("postgresql://db/mlflow", "4") == ""
    # sorted best first by the objective: the trial runs show, not folded under the sweep's
    assert browse_hint("http://m:5000", "4", order_by="val_loss").endswith(
        "/#/experiments/4/runs?workflowType=machine_learning"
        "&orderByKey=metrics.%60val_loss%60&orderByAsc=true"
    )
    assert "orderByAsc=false" in browse_hint("http://m:5000", "4", order_by="val_accuracy")


def test_what_a_library_prints_itself_goes_to_the_log(tmp_path, capsys):
    from sweeps.quiet import attach_log, library_prints, quiet_libraries

    quiet_libraries()  # as the command line does without -v
    attach_log(tmp_path)
    with library_prints("mlflow.registry"):
        print("Successfully registered model 'm'.", file=sys.stderr)
        print("Created version '1' of model 'm'.")
    captured = capsys.readouterr()
    assert "registered" not in captured.out + captured.err
    log = (tmp_path / "compsweep.log").read_text()
    assert "INFO mlflow.registry: Successfully registered model 'm'." in log
    assert "Created version '1'" in log


def test_rays_error_messages_go_to_the_log(tmp_path, capsys):
    """Ray's driver prints the cluster's error messages itself (a thread, not a logger):
    here through Ray's own function, as its listener thread calls it."""
    import ray._private.worker as ray_worker

    from sweeps.quiet import attach_log, quiet_libraries, route_libraries

    quiet_libraries()
    route_libraries()  # after `import ray`, as connect_ray does
    attach_log(tmp_path)
    message = "A worker died or was killed while executing a task by an unexpected system error."
    ray_worker.print_to_stdstream(
        {"lines": [message], "pid": "raylet", "is_err": False}, ignore_prefix=False
    )
    captured = capsys.readouterr()
    assert "worker died" not in captured.out + captured.err
    assert f"WARNING ray: (raylet) {message}" in (tmp_path / "compsweep.log").read_text()


# A command line, then a library that speaks the way it does inside a sweep: Optuna installs its
# stderr handler on import, compsweep re-routes after such imports, then Optuna logs a new study.
LIBRARY_AFTER_CLI = """
import sys
from sweeps import cli
from sweeps.quiet import route_libraries
assert cli.main(sys.argv[1:] + ["schema", "config"]) == 0
import optuna
route_libraries()
optuna.create_study()
"""


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "-v"])
def test_minus_v_lets_the_libraries_speak_and_the_default_does_not(verbose):
    flags = ["-v"] if verbose else []
    done = subprocess.run([sys.executable, "-c", LIBRARY_AFTER_CLI, *flags], text=True,
                          capture_output=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"title"' in done.stdout  # the command's own output either way
    assert ("A new study created in memory" in done.stderr) is verbose, done.stderr[-2000:]


# -- progress -----------------------------------------------------------------------------------


def test_eta_comes_from_the_finished_trials_durations():
    assert eta_seconds([], 10, [], 2) is None  # nothing finished: no guess
    # 2 slots, trials of 10 s: 2 running (3 s and 12 s in) and 4 not started
    assert eta_seconds([8.0, 12.0], 6, [3.0, 12.0], 2) == pytest.approx((7 + 0 + 4 * 10) / 2)
    assert [duration_text(s) for s in (4.4, 65, 3725, None)] == ["4s", "1m05s", "1h02m", "-"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _spec(trials: int = 2):
    return from_dict_spec(
        {
            "name": "t",
            "train": {
                "data": {"name": "digits"},
                "model": {"name": "small_cnn"},
                "compression": {"method": "prune"},
                "run": {"epochs": 1},
            },  # fmt: skip
            "space": {"name": "prune", "overrides": {"lr": 0.05}},
            "budget": {"num_trials": trials, "max_concurrent": 2},
        }
    )


def _trial(n: int, status: str = "RUNNING", **result):
    return SimpleNamespace(trial_id=f"id{n}", experiment_tag=f"{n}_x", status=status,
                           config={"rate": 0.5392081848656933, "pnr": 13, "lr": 0.05},
                           last_result=result, error_file=None)  # fmt: skip


def _drive(progress: SweepProgress) -> None:
    a, b = _trial(1), _trial(2)
    trials = [a, b]
    progress.on_trial_start(0, trials, a)
    progress.on_trial_start(0, trials, b)
    progress.on_trial_result(0, trials, a, {"val_accuracy": 0.5, "epoch": 0.5})
    a.last_result = {"val_accuracy": 0.9, "test_accuracy": 0.8, "compression_ratio": 2.0,
                     "completed": True}  # fmt: skip
    progress.on_trial_complete(0, trials, a)
    a.status = "TERMINATED"
    b.last_result = {"diverged": True, "status_reason": "non-finite training loss at step 3"}
    progress.on_trial_complete(0, trials, b)
    b.status = "TERMINATED"
    progress.on_experiment_end(trials)


def test_plain_lines_when_the_output_is_no_terminal():
    out = io.StringIO()
    assert not wants_live(out)
    _drive(SweepProgress(_spec(), out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "\x1b[" not in out.getvalue()  # start ×2, evaluation, end ×2
    assert re.search(r"1/2 done, 1 running, best val_accuracy 0\.9000 \(prune r=0\.54 pnr=13 · "
                     r"t01\) \| trial id1 finished in \d+s: .*· prune r=0\.54 pnr=13 · t01$",
                     lines[3])  # fmt: skip
    assert "trial id2 DIVERGED: non-finite training loss at step 3 (after " in lines[4]
    assert "0.5392081848656933" not in out.getvalue()


def test_a_terminal_gets_a_live_view_with_bar_eta_and_one_line_per_finished_trial(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    out = _Terminal()
    assert wants_live(out)
    _drive(SweepProgress(_spec(), out))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # drop cursor moves, colours
    assert "2/2 done · 0 running · 1 failed" in text and "ETA" in text and "━" in text
    assert "best val_accuracy 0.9000 (prune r=0.54 pnr=13 · t01)" in text
    assert re.search(r"trial id1 finished in \d+s: val_accuracy 0\.9000", text)
    assert "trial id1 started" not in text  # the view shows running trials; lines are events
    monkeypatch.setenv("TERM", "dumb")
    assert not wants_live(_Terminal())


def test_the_best_so_far_names_only_a_trial_that_ran_to_its_end():
    """A trial ASHA stopped early reports a value from partway through: `best` and `analyze`
    never rank it, and neither does the live best, however high the value."""
    out = io.StringIO()
    progress = SweepProgress(_spec(3), out)
    a, b, c = _trial(1), _trial(2), _trial(3)
    trials = [a, b, c]
    for t in trials:
        progress.on_trial_start(0, trials, t)
    a.last_result = {"val_accuracy": 0.99, "epoch": 2.0}  # stopped by the scheduler
    progress.on_trial_complete(0, trials, a)
    a.status = "TERMINATED"
    assert "best -" in out.getvalue().splitlines()[-1]
    b.last_result = {"val_accuracy": 0.7, "completed": True}
    progress.on_trial_complete(0, trials, b)
    b.status = "TERMINATED"
    c.last_result = {"val_accuracy": 0.95, "diverged": True, "status_reason": "nan at step 3"}
    progress.on_trial_complete(0, trials, c)
    last = out.getvalue().splitlines()[-1]
    assert "best val_accuracy 0.7000 (prune r=0.54 pnr=13 · t02)" in last, last


# -- compsweep ui --------------------------------------------------------------------------------


def test_ui_refuses_a_missing_store_and_names_the_sweeps_store(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "compsweep_results" / "s-20260101-000000-abcd"
    sweep.mkdir(parents=True)
    (sweep / "compsweep.json").write_text('{"tracking_uri": "sqlite:////data/sweeps/mlflow.db"}')
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in err
    assert "track into sqlite:////data/sweeps/mlflow.db" in err
    assert not (tmp_path / "mlflow.db").exists() and sorted(os.listdir(tmp_path)) == [
        "compsweep_results"
    ]


@pytest.mark.integration
def test_ui_is_light_and_ready_in_seconds_with_runs_view_links(tmp_path):
    """A real store with one run: one server process (no job consumers), ready within
    seconds, a runs-view link per experiment, nothing created in the working folder, and
    gone within seconds of Ctrl-C."""
    import psutil
    from mlflow import MlflowClient
    from mlflow_server import free_port

    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.create_experiment("digits")
    client.create_run(exp, run_name="prune r=0.80 pnr=13 · t03")
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen([COMPSWEEP, "ui", "--tracking-uri", f"sqlite:///{store}", "--port",
                             str(port)], cwd=work, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = proc.stdout.readline()
        ready = time.monotonic() - t0
        assert first.startswith("MLflow UI ready in "), first
        link = proc.stdout.readline()
        assert link.strip() == (
            f"digits (1 runs): http://127.0.0.1:{port}/#/experiments/{exp}/runs"
            "?workflowType=machine_learning"
        )
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == 1, [c.cmdline() for c in children]  # one web worker, no jobs
        assert not any("huey" in " ".join(c.cmdline()) for c in children)
        assert ready < 60, ready  # ~4 s on an idle 2-CPU machine
        assert os.listdir(work) == []
    finally:
        proc.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        proc.wait(timeout=30)
    assert time.monotonic() - stopped < 15
    assert not [c for c in children if _alive(c)]


def _alive(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- a real sweep -------------------------------------------------------------------------------

# Lines compsweep prints in a sweep (plain mode); anything else came from a library.
OWN_LINE = re.compile(
    r"^(|sweep \S+: \d+ trials .*|\[ *\d+s\] \d+/\d+ done, \d+ running, .*|\d+/\d+ trials: .*"
    r"|best finished trials by .*|trial +val_acc .*|t\d\d \S+ +\d\.\d{4} .*|MLflow: experiment .*"
    r"|Browse it (at|with) .*|Sweep state: .*|Ray, Optuna and MLflow logged \d+ warning\(s\): .*)$"
)
LIBRARY_MARKS = ("INFO", "WARNING", "optuna", "Optuna]", "A new study", "╭", "Search algorithm",
                 "TensorBoard", "tensorboard", "View run", "View experiment", "Tuner.restore",
                 "Traceback", "Creating initial", "Started a local Ray", "Token authentication")  # fmt: skip


@pytest.mark.integration
def test_a_real_sweep_prints_only_compsweep_lines_and_names_its_runs(tmp_path, mlflow_server):
    from mlflow import MlflowClient
    from sweep_helpers import sweep_runs, tiny_spec

    spec = tiny_spec("quiet", mlflow_server.uri, str(tmp_path / "results"), trials=3, steps=24)
    path = tmp_path / "quiet.yaml"
    path.write_text(yaml.safe_dump(spec))
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    try:
        done = subprocess.run([COMPSWEEP, "run", str(path)], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=600)  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, out[-3000:] + err[-3000:]
    assert err == "", err[-3000:]
    strays = [line for line in out.splitlines() if not OWN_LINE.match(line)]
    assert strays == [], strays
    assert not [m for m in LIBRARY_MARKS if m in out], out
    assert "\x1b[" not in out and "━" not in out  # piped: plain lines, no live view
    assert re.search(r"trial \S+ finished in \d+s: val_accuracy", out)

    log = next((tmp_path / "results").glob("quiet-*/compsweep.log")).read_text()
    assert "A new study created" in log and "Started a local Ray instance" in log

    _, children = sweep_runs(mlflow_server.uri, "quiet")
    names = sorted(r.info.run_name for r in children)
    assert len(names) == 3 and all(RUN_NAME.match(n) for n in names), names
    assert [label_of_run_name(n) for n in names] != [""] * 3
    assert sorted(label_of_run_name(n) for n in names) == ["t01", "t02", "t03"]
    exp = MlflowClient(mlflow_server.uri).get_experiment_by_name("quiet")
    assert f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in out


def test_sqlite_store_helper_reads_experiments_without_mlflow(tmp_path):
    from sweeps.ui import experiments

    db = tmp_path / "m.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE experiments (experiment_id, name, lifecycle_stage)")
        c.execute("CREATE TABLE runs (run_uuid, experiment_id, lifecycle_stage)")
        c.executemany("INSERT INTO experiments VALUES (?, ?, ?)",
                      [(0, "Default", "active"), (1, "digits", "active"), (2, "old", "deleted")])  # fmt: skip
        c.executemany("INSERT INTO runs VALUES (?, ?, ?)",
                      [("a", 1, "active"), ("b", 1, "active"), ("c", 2, "active")])  # fmt: skip
    assert experiments(f"sqlite:///{db}") == [("1", "digits", 2)]  # empty and deleted left out
