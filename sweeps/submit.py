"""``compsweep submit``: run a sweep's driver as a Ray job on a cluster, losing nothing.

The job runs in a temporary copy of the working folder on the cluster, which Ray deletes when
the job ends. So a sweep that would track into, or store under, that folder is refused here,
before anything is sent: the tracking URI must be a server (or a file every node sees, on a
cluster on this machine) and the storage path absolute. ``MLFLOW_TRACKING_URI`` is taken from
the environment when the spec names no tracking URI. Credentials never appear on a command
line or in printed output: they travel as environment variables in a private file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from sweeps.cluster import RAY_JOB_ENV, ray_auth_env
from sweeps.secrets import PASSWORD_VAR, USERNAME_VAR, redact, split_credentials
from sweeps.spec import SweepSpec

EXCLUDES = [".venv", "venv", ".git", "mlruns", "mlartifacts", "mlflow.db", "compsweep_results",
            "ray_results", "data", "**/__pycache__", "*.pt", "*.ckpt"]  # fmt: skip


def _loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def address_problem(address: str, timeout: float = 5.0) -> str | None:
    """Why ``address`` is not a Ray job API this machine can reach, or None.

    Asked before anything is sent: ``ray job submit`` would otherwise answer a wrong scheme or a
    cluster that is down with a long traceback.
    """
    parsed = urlparse(address if "://" in address else f"http://{address}")
    if parsed.scheme.lower() not in ("http", "https") or not parsed.hostname:
        return (
            f"--address {address}: expected the URL of the Ray cluster's dashboard (its job "
            "API), e.g. http://HEAD:8265 (or https://)"
        )
    try:
        port = parsed.port  # raises on a port that is no number
        with urllib.request.urlopen(f"{parsed.scheme}://{parsed.netloc}/api/version",
                                    timeout=timeout):  # fmt: skip
            pass
    except urllib.error.HTTPError:
        pass  # something answered (e.g. 401 without the cluster's token): Ray says the rest
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        where = f"{parsed.hostname}:{port}" if port else parsed.hostname
        return (
            f"--address {address}: no Ray dashboard answers at {where} ({reason}); check that "
            "the cluster is up and that this is its dashboard address (http://HEAD:8265), "
            "reachable from this machine (e.g. through an SSH tunnel)"
        )
    return None


def submit_problems(spec: SweepSpec, address: str) -> list[str]:
    """What would be lost if this spec ran as a job on the cluster at ``address``."""
    problems = []
    uri = spec.tracking.uri
    scheme = urlparse(uri).scheme.lower() if uri else ""
    if not uri:
        problems.append(
            "tracking.uri: none given (and no MLFLOW_TRACKING_URI here): the runs would go into "
            "an SQLite file inside the job's temporary folder and be deleted with it; give the "
            "MLflow server's URL (--set tracking.uri=http://HOST:5000)"
        )
    elif scheme in ("sqlite", "file", ""):
        path = uri.split(":///", 1)[-1] if scheme == "sqlite" else urlparse(uri).path or uri
        relative = not (
            uri.startswith("sqlite:////") if scheme == "sqlite" else os.path.isabs(path)
        )
        if relative:
            problems.append(
                f"tracking.uri: {uri} is relative to the job's temporary folder and would be "
                "deleted with it; use an MLflow server's URL"
            )
        elif not _loopback(address):
            problems.append(
                f"tracking.uri: {uri} is a file on this machine; a cluster elsewhere cannot "
                "write to it: use an MLflow server's URL"
            )
    if not os.path.isabs(spec.storage.path):
        problems.append(
            f"storage.path: {spec.storage.path!r} is relative to the job's temporary folder and "
            "would be deleted with it (and resume would find nothing): give an absolute path "
            "every Ray node mounts (--set storage.path=/shared/compsweep_results)"
        )
    return problems


def submit(
    spec: SweepSpec,
    *,
    spec_arg: str,
    overrides: list[tuple[str, Any]],
    address: str,
    working_dir: str,
    python: str,
    env_items: list[str],
    no_wait: bool,
    eopt_from: str | None = None,
) -> int:
    """Submit ``compsweep run SPEC`` as a Ray job; returns ``ray job submit``'s exit code."""
    env_vars: dict[str, str] = {}
    for item in env_items:
        key, sep, value = item.partition("=")
        if not sep and key not in os.environ:
            print(f"error: --env {key}: not set in this environment", file=sys.stderr)
            return 2
        env_vars[key] = value if sep else os.environ[key]
    bare, user, password = split_credentials(spec.tracking.uri)
    if user:
        env_vars[USERNAME_VAR] = user
    if password is not None:
        env_vars[PASSWORD_VAR] = password
    spec.tracking.uri = bare
    problems = submit_problems(spec, address)
    if problems:
        print("error: submitting this sweep would lose its results:", file=sys.stderr)
        for p in problems:
            print(f"  - {redact(p)}", file=sys.stderr)
        return 2
    problem = address_problem(address)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    job_id = f"compsweep-{spec.name}-{secrets.token_hex(4)}"
    env_vars[RAY_JOB_ENV] = job_id
    entry = job_entrypoint(python, spec_arg, overrides, bare, sorted(env_vars), eopt_from)
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    with tempfile.TemporaryDirectory(prefix="compsweep-submit-") as tmp:
        # Values (e.g. MLflow credentials) reach the job through a private file, not the
        # command line, which other users of this machine can read.
        runtime_env = Path(tmp) / "runtime_env.yaml"
        runtime_env.write_text(yaml.safe_dump({"excludes": EXCLUDES, "env_vars": env_vars}))
        runtime_env.chmod(0o600)
        cmd = [ray_cli, "job", "submit", "--address", address, "--working-dir", working_dir,
               "--submission-id", job_id, "--runtime-env", str(runtime_env)]  # fmt: skip
        if no_wait:
            cmd.append("--no-wait")
        cmd += ["--", *entry]
        shown = sorted(k for k in env_vars if k != RAY_JOB_ENV)
        extra = f"  (env_vars: {', '.join(shown)})" if shown else ""
        print(redact("+ " + " ".join(cmd) + extra), flush=True)
        stop = (f"Ray job {job_id}; stop the sweep with: compsweep stop SWEEP_ID --address "
                f"{address} --tracking-uri {bare}")  # fmt: skip
        return _run_submission(cmd, stop)


def _run_submission(cmd: list[str], submitted_line: str) -> int:
    """Run ``ray job submit``, passing its output on; ``submitted_line`` is printed once Ray
    says the job was submitted. If it never does, its output is one error line, not Ray's
    traceback, and the exit code says the submission failed."""
    # `ray job submit` finds the cluster's token but sends it only with RAY_AUTH_MODE=token.
    proc = subprocess.Popen(cmd, env={**os.environ, **ray_auth_env()}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")  # fmt: skip
    held: list[str] = []  # Ray's lines until the job is in: a traceback, if it is not
    submitted = False
    assert proc.stdout is not None
    for line in proc.stdout:
        if submitted:
            print(line, end="", flush=True)
            continue
        held.append(line)
        if "submitted successfully" in line:
            submitted = True
            print("".join(held), end="", flush=True)
            print(submitted_line, flush=True)
    code = proc.wait()
    if submitted:
        return code
    last = next((ln.strip() for ln in reversed(held) if ln.strip()), f"exit code {code}")
    print(f"error: the Ray job was not submitted: {redact(last)}", file=sys.stderr)
    return code or 1


def job_entrypoint(
    python: str,
    spec_arg: str,
    overrides: list[tuple[str, Any]],
    tracking_uri: str,
    env_keys: list[str],
    eopt_from: str | None = None,
) -> list[str]:
    """The job's command: ``compsweep run`` of the shipped spec with the same overrides."""
    entry = [python, "-m", "sweeps.cli", "run", spec_arg]
    for key, value in overrides:
        if key != "tracking.uri":
            entry += ["--set", f"{key}={json.dumps(value)}"]
    entry += ["--set", f"tracking.uri={json.dumps(tracking_uri)}"]
    if eopt_from:
        # Read where the sweep runs: the source sweep lives on the cluster's tracking server.
        entry += ["--eopt-from", eopt_from]
    for key in env_keys:  # recorded by name, so `resume --address` forwards them again
        if key != RAY_JOB_ENV:
            entry += ["--env", key]
    return entry
