"""A real multi-node Ray cluster on one machine (``ray start --head`` + ``ray start`` workers).

Every node is a ``ray start --block`` process in its own session, so the cluster is stopped
by the ids of the processes it started: never ``ray stop``, which would end every Ray on the
machine (other test runs included). Each cluster has its own short ``--temp-dir`` (Unix socket
paths are limited to ~107 characters) and its own free ports, so a ``ray.init()`` elsewhere on
the machine never finds it and two clusters never collide.

Token authentication stays on (Ray 2.60's default when ``~/.ray/auth_token`` exists; the
token is generated first if it is missing). Worker nodes, ``ray job`` clients and drivers given
an explicit address do not turn it on by themselves, and a token alone (file or
``RAY_AUTH_TOKEN``) is not sent: they need ``RAY_AUTH_MODE=token`` in their environment, which
:meth:`LocalRayCluster.env` provides to every process of and for the cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from mlflow_server import free_port

TOKEN_FILE = Path.home() / ".ray" / "auth_token"


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class LocalRayCluster:
    """Start a head with :meth:`start_head`, add nodes with :meth:`add_worker`, end with
    :meth:`stop` (also a context manager)."""

    def __init__(self, startup_timeout: float = 180.0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.dashboard_port = free_port()
        self.nodes: list[RayNode] = []
        bin_dir = str(Path(sys.executable).parent)
        # The venv first on PATH: `ray job submit` runs its entrypoint's `python` from there.
        self._env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self._env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        """The GCS address (``ray start --address``, ``ray.init``, ``RAY_ADDRESS``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The job API (``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for processes talking to this cluster (token auth on, venv on PATH)."""
        return {**self._env, **extra}

    def _ray(self) -> str:
        return str(Path(sys.executable).parent / "ray")

    def _start(self, name: str, args: list[str]) -> RayNode:
        if not TOKEN_FILE.is_file():  # the head would make one; workers and clients need it too
            subprocess.run([self._ray(), "get-auth-token", "--generate"], check=True,
                           capture_output=True, env=self.env())  # fmt: skip
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [self._ray(), "start", "--block", "--disable-usage-stats", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.root,
                start_new_session=True,  # its own process group, ended by id in stop()
            )
        node = RayNode(name, proc, log_path)
        self.nodes.append(node)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if "Ray runtime started" in log_path.read_text(errors="replace"):
                return node
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start` ({name}) exited with {proc.returncode}:\n"
                                   + node.log_tail())  # fmt: skip
            time.sleep(0.5)
        raise RuntimeError(f"`ray start` ({name}) not up after {self.startup_timeout}s:\n"
                           + node.log_tail())  # fmt: skip

    def _node_args(self, name: str, num_cpus: float, num_gpus: float) -> list[str]:
        return [
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            f"--temp-dir={self.root / name}",
            f"--dashboard-agent-listen-port={free_port()}",  # default 52365 is one per machine
            "--object-store-memory=100000000",
        ]

    def start_head(self, num_cpus: float, num_gpus: float = 0) -> RayNode:
        return self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--ray-client-server-port={free_port()}",  # default 10001 is one per machine
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                *self._node_args("head", num_cpus, num_gpus),
            ],
        )

    def add_worker(self, num_cpus: float, num_gpus: float = 0) -> RayNode:
        name = f"worker{len(self.nodes)}"
        return self._start(
            name, [f"--address={self.address}", *self._node_args(name, num_cpus, num_gpus)]
        )

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes as `ray list nodes` reports them (node_id, resources, ...)."""
        import json

        out = subprocess.run(
            [self._ray(), "list", "nodes", "--address", self.dashboard_url, "--format", "json",
             "--filter", "state=ALIVE"],
            check=True, capture_output=True, text=True, env=self.env(), timeout=120,
        ).stdout  # fmt: skip
        return json.loads(out)

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.alive_nodes()
            if len(nodes) >= n or time.monotonic() > deadline:
                return nodes
            time.sleep(1)

    def stop(self, timeout: float = 30.0) -> None:
        """End every process this cluster started: workers first, then the head."""
        for node in reversed(self.nodes):
            _stop_process_tree(node.proc, timeout)
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_process_tree(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the `ray start --block` process (it shuts its node down in order), then SIGKILL
    whatever is left of its process group and of the descendants it had."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(descendants, timeout=10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
