#!/usr/bin/env python3
"""Start the MLflow tracking server of a compsweep cluster.

PostgreSQL backend store, artifacts proxied by the server (``--serve-artifacts``) into a
directory (a volume), and MLflow's basic-auth app: every request except ``/health`` needs a
user name and password. The same script runs in the ``mlflow`` container of
``docker-compose.yml`` and, without containers, under ``scripts/local_cluster.py``.

Environment (secrets from ``.env``; see ``.env.example``):

=================================  ===========================================================
``POSTGRES_USER``, ``POSTGRES_PASSWORD``  database role (required)
``POSTGRES_HOST``, ``POSTGRES_PORT``      default ``postgres``, ``5432``
``POSTGRES_DB``                     tracking database, default ``mlflow``
``MLFLOW_AUTH_DB``                  users and permissions database, default ``mlflow_auth``
``MLFLOW_AUTH_ADMIN_USERNAME``      admin user created on first start, default ``admin``
``MLFLOW_AUTH_ADMIN_PASSWORD``      its password (required on first start)
``MLFLOW_FLASK_SERVER_SECRET_KEY``  static key for CSRF protection (required)
``MLFLOW_AUTH_DEFAULT_PERMISSION``  what any signed-in user may do by default, default ``READ``
``MLFLOW_ARTIFACTS_DESTINATION``    where artifacts are stored, default ``/mlflow/artifacts``
``MLFLOW_HOST``, ``MLFLOW_PORT``    listen address, default ``0.0.0.0``, ``5000``
``MLFLOW_WORKERS``                  server worker processes, default ``2``
``MLFLOW_SERVER_ALLOWED_HOSTS``     Host headers accepted (read by MLflow itself)
=================================  ===========================================================

Extra arguments are passed on to ``mlflow server``. The database password never appears on
a command line: the backend URI travels in ``MLFLOW_BACKEND_STORE_URI`` and the auth
database URI in a private (0600) auth config file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

REQUIRED = ("POSTGRES_USER", "POSTGRES_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def postgres_uri(env: dict[str, str], database: str) -> str:
    user = quote(env["POSTGRES_USER"], safe="")
    password = quote(env["POSTGRES_PASSWORD"], safe="")
    host = env.get("POSTGRES_HOST") or "postgres"
    port = env.get("POSTGRES_PORT") or "5432"
    return f"postgresql+psycopg://{user}:{password}@{host}:{port}/{quote(database, safe='')}"


def auth_config(env: dict[str, str]) -> str:
    """The basic-auth app's ini file. MLflow reads it with ConfigParser: '%' is doubled."""
    values = {
        "default_permission": env.get("MLFLOW_AUTH_DEFAULT_PERMISSION") or "READ",
        "database_uri": postgres_uri(env, env.get("MLFLOW_AUTH_DB") or "mlflow_auth"),
        "admin_username": env.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin",
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    lines = ["[mlflow]"] + [f"{k} = {v.replace('%', '%%')}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        print(f"mlflow_entrypoint: set {', '.join(missing)} (see .env.example)", file=sys.stderr)
        return 2
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")

    fd, ini = tempfile.mkstemp(prefix="mlflow-basic-auth-", suffix=".ini")
    with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
        f.write(auth_config(env))
    env["MLFLOW_AUTH_CONFIG_PATH"] = ini
    env["MLFLOW_BACKEND_STORE_URI"] = postgres_uri(env, env.get("POSTGRES_DB") or "mlflow")
    artifacts = env.get("MLFLOW_ARTIFACTS_DESTINATION") or "/mlflow/artifacts"
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    # The GenAI job runner (extra consumer processes) is not used by compsweep.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

    cmd = [
        mlflow,
        "server",
        "--app-name",
        "basic-auth",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        env.get("MLFLOW_HOST") or "0.0.0.0",
        "--port",
        env.get("MLFLOW_PORT") or "5000",
        "--workers",
        env.get("MLFLOW_WORKERS") or "2",
        *argv,
    ]
    print("mlflow_entrypoint: " + " ".join(cmd), flush=True)
    os.execve(mlflow, cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
