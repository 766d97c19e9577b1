"""The command line and the sweep records start light: importing them (and printing the help)
loads none of torch, Ray, MLflow, Optuna or matplotlib, which take seconds to import; the
commands import those when they run.

Each probe runs in a fresh interpreter: in this one, other tests have loaded those packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "mlflow", "optuna", "matplotlib")

PROBE = """
import contextlib, importlib, io, json, sys
heavy = {heavy!r}
found = {{}}
for name in {modules!r}:
    if name == "--help":
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            importlib.import_module("sweeps.cli").main(["run", "--help"])
    else:
        importlib.import_module(name)
    found[name] = sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
print(json.dumps(found))
"""


def _probe(modules: list[str]) -> dict[str, list[str]]:
    code = PROBE.format(heavy=HEAVY, modules=modules)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_records_cli_and_help_load_no_heavy_package():
    # sweeps.runner last: it does load Ray and the rest, so the probe is not vacuous.
    found = _probe(
        ["sweeps.records", "sweeps.tracking_uri", "sweeps.cli", "--help", "sweeps.runner"]
    )
    assert found["sweeps.records"] == []
    assert found["sweeps.tracking_uri"] == []  # checking a --tracking-uri stays light
    assert found["sweeps.cli"] == []
    assert found["--help"] == []
    assert {"torch", "ray", "optuna"} <= set(found["sweeps.runner"])
