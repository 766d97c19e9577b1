#!/usr/bin/env python3
"""End to end on real containers (``make test-docker``): build the images, bring the compose
cluster up, use it from this machine as the README tells a user, break it, check it, remove it.

1. Starts the Docker engine when absent and builds the images docker-compose.yml uses
   (``scripts/docker_images.py``: local base images and wheels where Docker Hub is out of reach).
2. Image hygiene: non-root users, no build secret in any layer (``docker history`` and a
   planted marker searched in ``docker save``), no CUDA library in the CPU image; sizes.
3. ``up -d --scale ray-worker=2``, waits for health, submits a small digits sweep through the
   Ray job API with MLflow credentials (``compsweep submit``), ``docker kill``s the worker of a
   trial that has a checkpoint and restarts the MLflow container while the sweep runs.
4. Checks: the sweep succeeded; through MLflow's authenticated REST API one parent and one run
   per trial, all FINISHED, every series point exactly once; the same in PostgreSQL's rows; the
   trials ran on both workers (node tags); the MLflow UI in headless Chromium lists the trials.
5. ``down -v`` (always) and checks that no container, network or volume is left.

Exit code 0 only when every check passed. ``--keep`` leaves the cluster up for a look.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docker_images import (  # noqa: E402
    PLANTED_SECRET,
    ROOT,
    E2EError,
    base_images,
    build,
    build_inputs,
    compose_cli,
    ensure_engine,
    image_size_mb,
    log,
    run,
)

PROJECT = "compsweep-e2e"
TAG = "0.1.0"
CPU_IMAGE = f"compsweep:{TAG}-cpu"
MLFLOW_IMAGE = f"compsweep-mlflow:{TAG}"
SWEEP = "compose-e2e"
TRIALS = 4
STORAGE = "/srv/compsweep/results"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The compose project: its variables, commands and containers."""

    def __init__(self, docker: str, postgres_image: str, workdir: Path) -> None:
        self.docker = docker
        self.compose = compose_cli(docker)
        self.mlflow_port, self.ray_port = _free_port(), _free_port()
        self.admin_password = secrets.token_urlsafe(24)
        self.ray_token = secrets.token_hex(32)
        self.postgres_password = secrets.token_urlsafe(24)
        self.values = {
            "POSTGRES_PASSWORD": self.postgres_password,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
            "RAY_AUTH_TOKEN": self.ray_token,
            "POSTGRES_IMAGE": postgres_image,
            "COMPSWEEP_TAG": TAG,
            "MLFLOW_PUBLISHED_PORT": str(self.mlflow_port),
            "RAY_DASHBOARD_PUBLISHED_PORT": str(self.ray_port),
            "RAY_WORKER_NUM_CPUS": "1",  # two one-CPU workers: two trials at a time
            "RAY_SHM_SIZE": "512mb",
        }
        self.env_file = workdir / "e2e.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.values.items()))
        self.env_file.chmod(0o600)
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.ray_port}"
        self.auth = ("admin", self.admin_password)

    def cmd(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
        # Only the env file's variables (not this process's nor a developer's .env).
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST")}
        env.update(COMPOSE_DOCKER_CLI_BUILD="1", DOCKER_BUILDKIT="1")
        return run([*self.compose, "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"),
                    "--project-directory", str(ROOT), "--env-file", str(self.env_file), *args],
                   timeout=timeout, check=check, env=env)  # fmt: skip

    def ids(self, service: str) -> list[str]:
        return self.cmd("ps", "-q", service).stdout.split()

    def one(self, service: str) -> str:
        ids = self.ids(service)
        if len(ids) != 1:
            raise E2EError(f"expected one {service} container, found {ids}")
        return ids[0]

    def state(self, cid: str) -> str:
        fmt = "{{.State.Status}}{{if .State.Health}}/{{.State.Health.Status}}{{end}}"
        return run([self.docker, "inspect", "--format", fmt, cid], check=False).stdout.strip()

    def logs(self, tail: int = 40) -> str:
        return self.cmd("logs", "--no-color", f"--tail={tail}", check=False).stdout[-12000:]

    def ray_nodes(self) -> list[dict]:
        resp = requests.get(f"{self.dashboard_url}/nodes?view=summary", timeout=10,
                            headers={"Authorization": f"Bearer {self.ray_token}"})  # fmt: skip
        resp.raise_for_status()
        return [n["raylet"] for n in resp.json()["data"]["summary"]]

    def worker_hosts(self) -> dict[str, str]:
        """Host name -> ray-worker container (a container's host name is its short id)."""
        return {run([self.docker, "inspect", "--format", "{{.Config.Hostname}}", cid]).stdout.strip(): cid
                for cid in self.ids("ray-worker")}  # fmt: skip

    def node_containers(self) -> dict[str, str]:
        """Ray node id -> ray-worker container, for every Ray node alive or dead (by host
        name: a killed and restarted worker keeps its container but is a new Ray node)."""
        hosts = self.worker_hosts()
        return {n["nodeId"]: hosts[n["nodeManagerHostname"]] for n in self.ray_nodes()
                if n.get("nodeManagerHostname") in hosts}  # fmt: skip

    def alive_workers(self) -> set[str]:
        return {n["nodeId"] for n in self.ray_nodes()
                if n["state"] == "ALIVE" and not n.get("isHeadNode")}  # fmt: skip

    def wait_healthy(self, workers: int, timeout: float = 420) -> None:
        """postgres, mlflow and ray-head healthy, ``workers`` Ray workers alive."""
        deadline = time.monotonic() + timeout
        while True:
            states = {s: [self.state(c) for c in self.ids(s)] for s in ("postgres", "mlflow", "ray-head")}  # fmt: skip
            status = f"{states}"
            if all(v == ["running/healthy"] for v in states.values()):
                try:
                    alive = self.alive_workers()
                except (requests.RequestException, KeyError, ValueError) as e:
                    status = f"Ray dashboard: {e}"
                else:
                    if len(alive) >= workers:
                        return
                    status = f"{len(alive)}/{workers} Ray workers alive"
            if time.monotonic() > deadline:
                raise E2EError(
                    f"cluster not healthy after {timeout:.0f} s: {status}\n{self.logs()}"
                )
            time.sleep(3)

    def psql(self, sql: str) -> str:
        return self.cmd("exec", "-T", "postgres", "psql", "-U", "mlflow", "-d", "mlflow",
                        "-tAc", sql, timeout=60).stdout.strip()  # fmt: skip


# ------------------------------------------------------------------------------ hygiene


def check_images(docker: str, images: list[str], cpu_image: str, extra_secrets: list[str]) -> dict:
    """Non-root users, no secret in history or layers, no CUDA in the CPU image; sizes."""
    report = {}
    for image in images:
        user = run([docker, "image", "inspect", "--format", "{{.Config.User}}", image]).stdout.strip()  # fmt: skip
        if user.split(":")[0] in ("", "root", "0"):
            raise E2EError(f"{image} runs as root (USER {user!r})")
        history = run([docker, "history", "--no-trunc", "--format", "{{.CreatedBy}}", image]).stdout
        for needle in [PLANTED_SECRET, "BEGIN CERTIFICATE", *extra_secrets]:
            if needle in history:
                raise E2EError(f"{image}: a secret shows in docker history ({needle[:12]}...)")
        found = _grep_saved_image(docker, image, [PLANTED_SECRET.encode()])
        if found:
            raise E2EError(f"{image}: the planted build secret is in the saved image")
        report[image] = {"user": user, "size_mb": round(image_size_mb(docker, image))}
        log(f"{image}: user {user}, {report[image]['size_mb']} MB, no secret in history or layers")
    probe = (
        "import importlib.metadata as m, importlib.util, torch, ray, mlflow, optuna, sweeps\n"
        "tv = importlib.util.find_spec('torchvision') and __import__('torchvision').__version__\n"
        "nv = sorted(d.metadata['Name'] for d in m.distributions()"
        " if d.metadata['Name'].lower().startswith('nvidia'))\n"
        "print(torch.__version__, torch.version.cuda, tv or 'no-torchvision', ray.__version__,"
        " mlflow.__version__, optuna.__version__, nv)\n"
    )
    out = run([docker, "run", "--rm", "--entrypoint", "python", cpu_image, "-c", probe],
              timeout=300).stdout.strip()  # fmt: skip
    libs = run([docker, "run", "--rm", "--user", "0", "--entrypoint", "sh", cpu_image, "-c",
                "find / -xdev \\( -name 'libcudart*' -o -name 'libcublas*' -o -name 'libcudnn*'"
                " -o -name 'libnccl*' -o -name 'libcufft*' -o -name 'libcusparse*' \\) -print"],
               timeout=300).stdout.split()  # fmt: skip
    torch_v, cuda, *_rest = out.split(" ", 2)
    if cuda != "None" or libs or not out.endswith("[]"):
        raise E2EError(f"the CPU image carries CUDA: {out}; {libs[:5]}")
    report["cpu_versions"] = out
    log(f"CPU image: torch, CUDA, torchvision, ray, mlflow, optuna, nvidia pkgs = {out}")
    return report


def _grep_saved_image(docker: str, image: str, needles: list[bytes]) -> list[bytes]:
    """The needles present anywhere in ``docker save`` of the image (layers are plain tar)."""
    proc = subprocess.Popen([docker, "save", image], stdout=subprocess.PIPE)
    found, tail = set(), b""
    width = max(len(n) for n in needles)
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 22):
        block = tail + chunk
        found.update(n for n in needles if n in block)
        tail = block[-width:]
    if proc.wait(timeout=600) != 0:
        raise E2EError(f"docker save {image} failed")
    return sorted(found)


# ------------------------------------------------------------------------------ the sweep


def sweep_spec() -> dict:
    """A small digits sweep: 4 trials of a small CNN, 2 at a time, 1 CPU each, long enough to
    be interrupted after a checkpoint."""
    return {
        "name": SWEEP,
        "train": {
            "data": {"name": "digits", "batch_size": 32, "limit_train": 512},
            "model": {"name": "small_cnn"},
            "compression": {"targets": {"min_params": 10}},
            "run": {
                "steps": int(os.environ.get("COMPSWEEP_E2E_STEPS", "400")),
                "eval_every": 1.0,
                "device": "cpu",
            },  # fmt: skip
        },
        "space": {"name": "prune", "overrides": {"pnr": {"low": 2, "high": 6}, "lr": 0.05}},
        "budget": {"num_trials": TRIALS, "max_concurrent": 2},
        "resources": {"cpus": 1},
        "failure": {"max_failures": 3},
        "seed": 0,
    }


def submit(cluster: Cluster, workdir: Path) -> tuple[subprocess.Popen, Path]:
    """``compsweep submit`` as the README shows, in the background; output to a file."""
    job = workdir / "job"
    job.mkdir()
    (job / "spec.yaml").write_text(yaml.safe_dump(sweep_spec(), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=cluster.ray_token,
        MLFLOW_TRACKING_USERNAME="admin",
        MLFLOW_TRACKING_PASSWORD=cluster.admin_password,
    )
    out = workdir / "submit.log"
    cmd = [str(BIN / "compsweep"), "submit", "spec.yaml", "--address", cluster.dashboard_url,
           "--set", "tracking.uri=http://mlflow:5000", "--set", f"storage.path={STORAGE}",
           "--env", "MLFLOW_TRACKING_USERNAME", "--env", "MLFLOW_TRACKING_PASSWORD"]  # fmt: skip
    log("submitting: " + " ".join(cmd[1:]))
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, cwd=job, env=env, stdout=f, stderr=subprocess.STDOUT)
    return proc, out


def _trial_worker(cluster: Cluster) -> str | None:
    """A ray-worker container running a trial (a ``ray::ImplicitFunc.train`` process; an idle
    reused trial actor is only ``ray::ImplicitFunc``)."""
    for cid in cluster.ids("ray-worker"):
        top = run([cluster.docker, "top", cid], check=False, timeout=30).stdout
        if "ray::ImplicitFunc.train" in top:
            return cid
    return None


def _has_checkpoint(cluster: Cluster) -> bool:
    res = cluster.cmd("exec", "-T", "ray-head", "find", STORAGE, "-maxdepth", "4",
                      "-name", "checkpoint_*", "-print", "-quit", check=False, timeout=60)  # fmt: skip
    return bool(res.stdout.strip())


def interrupt(cluster: Cluster, proc: subprocess.Popen, out: Path) -> dict:
    """While the sweep runs: kill the worker container of a trial once a trial has a checkpoint,
    restart the MLflow container, start the killed worker again. Returns what was done."""
    deadline = time.monotonic() + 600
    victim = None
    while victim is None:
        if proc.poll() is not None:
            raise E2EError(f"the sweep ended before any checkpoint:\n{out.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise E2EError("no trial saved a checkpoint within 600 s")
        if _has_checkpoint(cluster):
            victim = _trial_worker(cluster)
        time.sleep(1)
    run([cluster.docker, "kill", victim], timeout=60)
    log(f"killed Ray worker container {victim[:12]} mid-trial (docker kill)")
    # Both right away, so both surely fall inside the sweep however fast this machine is.
    mlflow = cluster.one("mlflow")
    run([cluster.docker, "restart", mlflow], timeout=120)
    restarted_mid_sweep = proc.poll() is None
    log("restarted the MLflow container mid-sweep")
    run([cluster.docker, "start", victim], timeout=60)  # a no-op if its restart policy did it
    log("started the killed worker again: it rejoins as a new Ray node")
    return {"killed": victim, "mlflow_restarted_mid_sweep": restarted_mid_sweep}


def check_runs(cluster: Cluster, driver_output: str, nodes_before: dict[str, str]) -> dict:
    """Through MLflow's authenticated REST API and PostgreSQL: nothing lost, nothing twice."""
    api = f"{cluster.mlflow_uri}/api/2.0/mlflow"
    anonymous = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": SWEEP},
                             timeout=30)  # fmt: skip
    if anonymous.status_code != 401:
        raise E2EError(f"MLflow answered an unauthenticated request with {anonymous.status_code}")
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": SWEEP},
                       auth=cluster.auth, timeout=30)  # fmt: skip
    exp.raise_for_status()
    exp_id = exp.json()["experiment"]["experiment_id"]
    resp = requests.post(f"{api}/runs/search", auth=cluster.auth, timeout=60,
                         json={"experiment_ids": [exp_id], "max_results": 1000})  # fmt: skip
    resp.raise_for_status()
    runs = resp.json().get("runs", [])

    def tags(r: dict) -> dict[str, str]:
        return {t["key"]: t["value"] for t in r["data"].get("tags", [])}

    parents = [r for r in runs if tags(r).get("compsweep.role") == "sweep"]
    children = [r for r in runs if tags(r).get("compsweep.role") == "trial"]
    trial_ids = [tags(r).get("compsweep.trial_id") for r in children]
    problems = []
    if len(parents) != 1 or len(children) != TRIALS or len(set(trial_ids)) != TRIALS:
        problems.append(f"{len(parents)} parent / {len(children)} trial runs, trial ids {trial_ids}")  # fmt: skip
    for r in parents + children:
        if r["info"]["status"] != "FINISHED":
            problems.append(f"run {r['info']['run_name']} is {r['info']['status']}")
    for r in children:
        metrics = {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
        if "val_accuracy" not in metrics:
            problems.append(f"trial {r['info']['run_name']} has no val_accuracy")
        events = int(metrics.get("num_distortions", -1))
        for key in ("train_loss", "val_accuracy", "e_w"):
            hist = requests.get(f"{api}/metrics/get-history", auth=cluster.auth, timeout=30,
                                params={"run_id": r["info"]["run_id"], "metric_key": key,
                                        "max_results": 25000})  # fmt: skip
            hist.raise_for_status()
            steps = [int(m["step"]) for m in hist.json().get("metrics", [])]
            lost = key == "e_w" and len(steps) != events  # one e_w point per distortion
            if len(steps) < 2 or len(steps) != len(set(steps)) or lost:
                problems.append(f"trial {r['info']['run_name']} {key}: steps {sorted(steps)}, {events} distortions")  # fmt: skip

    # The same from PostgreSQL's rows: 1 + TRIALS runs, no (run, key, step) twice.
    where = f"e.name = '{SWEEP}'"
    n_runs = int(cluster.psql(
        f"SELECT count(*) FROM runs r JOIN experiments e USING (experiment_id) WHERE {where}"))  # fmt: skip
    dupes = int(cluster.psql(
        "SELECT count(*) FROM (SELECT m.run_uuid, m.key, m.step FROM metrics m "
        "JOIN runs r ON r.run_uuid = m.run_uuid JOIN experiments e USING (experiment_id) "
        f"WHERE {where} GROUP BY 1, 2, 3 HAVING count(*) > 1) d"))  # fmt: skip
    points = int(cluster.psql(
        "SELECT count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
        f"JOIN experiments e USING (experiment_id) WHERE {where}"))  # fmt: skip
    if n_runs != TRIALS + 1 or dupes:
        problems.append(f"PostgreSQL: {n_runs} runs, {dupes} (run, key, step) logged twice")

    # Both worker containers trained (a killed worker comes back as a new Ray node: node ids
    # map to containers through the ids seen before the sweep and those alive now).
    used = {tags(r).get("compsweep.ray_node_id") for r in children}
    for _ in range(10):  # the dashboard may lag behind a node that joined lately
        containers = {**nodes_before, **cluster.node_containers()}
        on = {containers.get(n, f"unknown node {n}") for n in used}
        if on == set(nodes_before.values()):
            break
        time.sleep(3)
    if on != set(nodes_before.values()):
        nodes = [(n["nodeId"][:8], n.get("nodeManagerHostname"), n["nodeManagerAddress"], n["state"]) for n in cluster.ray_nodes()]  # fmt: skip
        problems.append(f"trials ran on {sorted(on)}, not on both workers {sorted(nodes_before.values())}; Ray nodes {nodes}, worker hosts {cluster.worker_hosts()}")  # fmt: skip
    if "retrying from its last checkpoint" not in driver_output:
        problems.append("the driver did not report the killed trial's retry from its checkpoint")
    if problems:
        raise E2EError("run checks failed:\n  " + "\n  ".join(problems))
    log(f"MLflow API: 1 parent + {TRIALS} trials FINISHED, no point twice; PostgreSQL: "
        f"{n_runs} runs, {points} metric rows, 0 duplicates; trials on both workers ({len(used)} Ray nodes)")  # fmt: skip
    return {"experiment_id": exp_id, "trial_names": [r["info"]["run_name"] for r in children],
            "parent_name": parents[0]["info"]["run_name"]}  # fmt: skip


def check_ui(cluster: Cluster, exp_id: str, names: list[str], workdir: Path) -> Path:
    """The experiment's runs page in headless Chromium lists every trial run."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_deploy import _AuthProxy, _visible_text

    page = (f"#/experiments/{exp_id}/runs?workflowType=machine_learning"
            "&orderByKey=metrics.%60val_accuracy%60&orderByAsc=false")  # fmt: skip
    png = workdir / "mlflow-ui.png"
    proxy = _AuthProxy(cluster.mlflow_uri, *cluster.auth)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise E2EError("chromium not found: `make sysdeps` installs it")
    try:
        browser = run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                       "--disable-background-networking", "--disable-component-update",
                       "--disable-sync", "--disable-dev-shm-usage",
                       f"--user-data-dir={workdir / 'chromium'}", "--window-size=1400,900",
                       "--virtual-time-budget=20000", "--dump-dom", f"--screenshot={png}",
                       f"{proxy.url}/{page}"], timeout=240)  # fmt: skip
    finally:
        proxy.shutdown()
        proxy.server_close()
    text = _visible_text(browser.stdout)
    missing = [n for n in [SWEEP, *names] if n not in text]
    refused = [s for s in proxy.statuses if s[2] in (401, 403)]
    if missing or refused or not png.is_file() or png.stat().st_size < 20_000:
        raise E2EError(f"MLflow UI: missing {missing}, refused {refused[:5]}:\n{text[:2000]}")
    log(f"MLflow UI lists the {len(names)} trial runs; screenshot {png}")
    return png


# ------------------------------------------------------------------------------ main


def check_removed(docker: str) -> None:
    label = f"label=com.docker.compose.project={PROJECT}"
    left = {
        "containers": run([docker, "ps", "-aq", "--filter", label]).stdout.split(),
        "networks": run([docker, "network", "ls", "-q", "--filter", label]).stdout.split(),
        "volumes": run([docker, "volume", "ls", "-q", "--filter", label]).stdout.split(),
    }
    if any(left.values()):
        raise E2EError(f"`down -v` left {left}")
    log("down -v: no container, network or volume left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster up at the end")
    parser.add_argument("--build-only", action="store_true", help="build and check the images")
    args = parser.parse_args(argv)
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="compsweep-e2e-"))
    state: dict = {}
    ok = False
    try:
        _end_to_end(args, workdir, timings, state)
        ok = True
    except E2EError as e:
        print(f"\ntest-docker FAILED: {e}", file=sys.stderr, flush=True)
    except BaseException:  # a bug or Ctrl-C: the traceback, and still the teardown below
        traceback.print_exc()
    finally:
        cluster = state.get("cluster")
        if cluster is not None and not args.keep:
            t = time.monotonic()
            try:
                cluster.cmd("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)
                check_removed(cluster.docker)
            except E2EError as e:
                print(f"\ntest-docker FAILED at teardown: {e}", file=sys.stderr, flush=True)
                ok = False
            timings["down -v"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t_start
        log("timings (s): " + json.dumps({k: round(v) for k, v in timings.items()}))
        shutil.rmtree(workdir / "chromium", ignore_errors=True)
        log(f"test-docker {'passed' if ok else 'FAILED'}; files in {workdir}")
    return 0 if ok else 1


def _end_to_end(args: argparse.Namespace, workdir: Path, timings: dict, state: dict) -> None:
    docker = ensure_engine()
    t = time.monotonic()
    python_image, postgres_image = base_images(docker)
    timings["base images"] = time.monotonic() - t
    inputs, server = build_inputs(python_image, workdir)
    try:
        timings[MLFLOW_IMAGE] = build(docker, "docker/mlflow.Dockerfile", MLFLOW_IMAGE, inputs=inputs)  # fmt: skip
        timings[CPU_IMAGE] = build(docker, "docker/Dockerfile", CPU_IMAGE, target="cpu", inputs=inputs)  # fmt: skip
    finally:
        if server:
            server.close()
    t = time.monotonic()
    cluster = Cluster(docker, postgres_image, workdir)
    images = check_images(docker, [CPU_IMAGE, MLFLOW_IMAGE], CPU_IMAGE,
                          [cluster.admin_password, cluster.ray_token])  # fmt: skip
    timings["image checks"] = time.monotonic() - t
    if args.build_only:
        return

    state["cluster"] = cluster  # from here on, `down -v` at the end whatever happens
    cluster.cmd("down", "-v", "--remove-orphans", timeout=300)  # leftovers of a killed run
    t = time.monotonic()
    log("docker compose up -d --scale ray-worker=2")
    cluster.cmd("up", "-d", "--no-build", "--scale", "ray-worker=2", timeout=600)
    cluster.wait_healthy(workers=2)
    nodes_before = cluster.node_containers()
    if len(set(nodes_before.values())) != 2:
        raise E2EError(f"expected two Ray workers in two containers: {nodes_before}")
    timings["up + healthy"] = time.monotonic() - t
    log(f"cluster healthy in {timings['up + healthy']:.0f} s: 2 Ray workers alive")

    t = time.monotonic()
    proc, out = submit(cluster, workdir)
    try:
        done = interrupt(cluster, proc, out)
        proc.wait(timeout=1200)
    except subprocess.TimeoutExpired as e:
        raise E2EError(f"the sweep did not end within 20 min:\n{out.read_text()[-4000:]}") from e
    finally:
        if proc.poll() is None:
            proc.kill()
    output = out.read_text()
    timings["sweep"] = time.monotonic() - t
    if proc.returncode != 0 or "succeeded" not in output:
        raise E2EError(f"compsweep submit exited {proc.returncode}:\n{output[-5000:]}\n{cluster.logs()}")  # fmt: skip
    if cluster.admin_password in output:
        raise E2EError("the MLflow password shows in the job's output")
    if not done["mlflow_restarted_mid_sweep"]:
        raise E2EError("the sweep ended before the MLflow restart: make the trials longer "
                       "(COMPSWEEP_E2E_STEPS)")  # fmt: skip
    log(f"sweep succeeded in {timings['sweep']:.0f} s despite the kill and the restart")

    t = time.monotonic()
    found = check_runs(cluster, output, nodes_before)
    check_ui(cluster, found["experiment_id"], found["trial_names"], workdir)
    timings["checks"] = time.monotonic() - t
    log("sizes: " + ", ".join(f"{k} {v['size_mb']} MB" for k, v in images.items() if "size_mb" in v))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
