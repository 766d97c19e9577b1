"""trainers/ is pure PyTorch: importing it, and every module in it, loads no ray, mlflow or
optuna module (docs/design.md §1), so the trainer runs in a unit test, under `compsweep train`
and in a Tune worker alike.

The imports run in a fresh interpreter: in this one, other tests have loaded those packages
already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("ray", "mlflow", "optuna")

# Imports `trainers`, then every module under it in name order, and prints which imports (if
# any) pulled in a forbidden package — the module itself or one it imports — and the first
# forbidden module each one loaded.
PROBE = """
import importlib, json, pkgutil, sys
forbidden = {forbidden!r}
extra = {extra!r}

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in forbidden)

import trainers
names = ["trainers"] + sorted(
    m.name for m in pkgutil.walk_packages(trainers.__path__, "trainers.")
) + extra
culprits = {{}}
for name in names:
    before = set(loaded())
    importlib.import_module(name)
    new = sorted(set(loaded()) - before)
    if new:
        culprits[name] = new[0]
print(json.dumps({{"imported": names, "culprits": culprits}}))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    """One fresh interpreter (importing torch there is the slow part): every trainers module,
    then ``optuna`` itself, which the probe must catch."""
    code = PROBE.format(forbidden=FORBIDDEN, extra=["optuna"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_trainers_loads_no_ray_mlflow_or_optuna(probe):
    # Every module was really imported (a package renamed or emptied would make this vacuous).
    assert {"trainers.loop", "trainers.metrics", "trainers.distortions.pruning"} <= set(
        probe["imported"]
    )
    from_trainers = {k: v for k, v in probe["culprits"].items() if k.startswith("trainers")}
    assert from_trainers == {}, (
        "importing these trainers modules (or a module they import) loads a package trainers/ "
        f"must not use (module: first forbidden module loaded): {from_trainers}"
    )


def test_the_probe_notices_a_forbidden_import(probe):
    # The module imported after trainers does load optuna: the probe must name it.
    assert set(probe["culprits"]) == {"optuna"}
    assert probe["culprits"]["optuna"].split(".")[0] == "optuna"
