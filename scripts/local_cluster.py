#!/usr/bin/env python3
"""The docker-compose topology of compsweep without containers, on this machine.

* PostgreSQL from the Debian packages (``initdb`` / ``pg_ctl`` in a private data directory,
  run as the ``postgres`` user when started as root), with the tracking and the auth databases;
* ``mlflow server`` with that backend store, proxied artifacts and basic authentication,
  started by ``docker/mlflow_entrypoint.py`` exactly as in the ``mlflow`` container;
* a Ray head and one Ray worker node (``ray start``), started by ``docker/ray-node.sh`` as in
  the ``ray-head`` / ``ray-worker`` containers, with Ray token authentication.

Every secret is generated afresh; every port is a free one on 127.0.0.1; nothing outside the
cluster's own directories is touched (in particular no ``ray stop``, which would stop every Ray
on the machine). Run it from the project's virtual environment::

    .venv/bin/python scripts/local_cluster.py up            # Ctrl-C stops and cleans up
    .venv/bin/python scripts/local_cluster.py up --dir /tmp/cluster --worker-cpus 2

``up`` prints the URLs and writes ``DIR/cluster.env`` (mode 0600) with the variables a client
needs (``source`` it, then ``compsweep submit``). The end-to-end test (tests/test_deploy.py)
uses :class:`LocalCluster` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path:
    """The newest PostgreSQL server binaries of the Debian packages (or ``PG_BINDIR``)."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL server not found (/usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql, or set PG_BINDIR"
        )
    return Path(found[-1]).parent


class ClusterError(RuntimeError):
    pass


class LocalCluster:
    """PostgreSQL + MLflow server (basic auth) + a two-node Ray cluster, as subprocesses."""

    def __init__(
        self,
        root: Path | str,
        *,
        head_cpus: int = 1,
        worker_cpus: int = 1,
        mlflow_workers: int = 1,
        startup_timeout: float = 180.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.mlflow_workers = mlflow_workers
        self.startup_timeout = startup_timeout

        # Secrets, as in .env.
        self.postgres_user = "mlflow"
        self.postgres_password = secrets.token_urlsafe(18)
        self.postgres_db = "mlflow"
        self.auth_db = "mlflow_auth"
        self.admin_user = "admin"
        self.admin_password = secrets.token_urlsafe(18)
        self.flask_secret = secrets.token_urlsafe(32)
        self.ray_token = secrets.token_hex(32)

        self.pg_port = free_port()
        self.mlflow_port = free_port()
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

        self.artifacts = self.root / "artifacts"
        self.logs = self.root / "logs"
        # Short paths: Ray's Unix sockets live below its temp dir (108-byte limit), and the
        # postgres user must be able to reach its data directory (pytest's tmp dirs are 0700).
        self._tmp = Path(tempfile.mkdtemp(prefix="csw-", dir="/tmp"))
        self.pg_dir = self._tmp / "pg"
        self._procs: dict[str, subprocess.Popen] = {}
        self._pg_started = False

    # ------------------------------------------------------------------ addresses and env

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def postgres_dsn(self) -> str:
        return (
            f"postgresql://{self.postgres_user}:{self.postgres_password}"
            f"@127.0.0.1:{self.pg_port}/{self.postgres_db}"
        )

    def client_env(self) -> dict[str, str]:
        """What a client (``compsweep submit``, ``ray``, MLflow) needs to use this cluster."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.ray_token,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_TRACKING_USERNAME": self.admin_user,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password,
        }

    def submit_command(self, spec: str, results: Path) -> list[str]:
        """The ``compsweep submit`` line for this cluster, as ``up`` prints it: the tracking URI
        comes from ``MLFLOW_TRACKING_URI`` (``client_env``), the credentials travel by name."""
        return [
            "compsweep", "submit", spec, "--address", self.dashboard_url,
            "--python", sys.executable, "--set", f"storage.path={results}",
            "--env", "MLFLOW_TRACKING_USERNAME", "--env", "MLFLOW_TRACKING_PASSWORD",
        ]  # fmt: skip

    def _base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "RAY_", "PG")) and k != "VIRTUAL_ENV"
        }
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        return env

    # ------------------------------------------------------------------ start / stop

    def start(self) -> LocalCluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start_postgres()
            # MLflow and Ray start side by side (as docker-compose does): startup is mostly
            # Python imports and database migrations.
            self._start_mlflow()
            self._start_ray()
            self._wait("mlflow", lambda: _http_ok(f"{self.mlflow_uri}/health"))
            self._wait("ray-worker", lambda: self._ray_ready(2))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("ray-worker", "ray-head", "mlflow"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _stop_group(proc)
        if self._pg_started:
            self._pg_started = False
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._pg(["pg_ctl", "-D", str(self.pg_dir / "data"), "-m", "fast", "-w", "stop"])
        self._kill_strays()
        if self.pg_dir.exists():
            with contextlib.suppress(OSError):
                shutil.copy(self.pg_dir / "postgres.log", self.logs / "postgres.log")
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ PostgreSQL

    def _pg(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """A PostgreSQL server program, as the postgres user if we are root."""
        cmd = [str(postgres_bindir() / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)

    def _start_postgres(self) -> None:
        self.pg_dir.mkdir()
        pwfile = self.pg_dir / "pwfile"
        pwfile.write_text(self.postgres_password + "\n")
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            import pwd

            try:
                pg = pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterError(
                    "as root, PostgreSQL runs as the 'postgres' user: none"
                ) from None
            for p in (self._tmp, self.pg_dir, pwfile):
                os.chown(p, pg.pw_uid, pg.pw_gid)
            self._tmp.chmod(0o755)
        try:
            self._pg(
                ["initdb", "-D", str(self.pg_dir / "data"), "-U", self.postgres_user,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"]
            )  # fmt: skip
            self._pg(
                ["pg_ctl", "-D", str(self.pg_dir / "data"), "-l", str(self.pg_dir / "postgres.log"),
                 "-w", "-t", "60", "-o",
                 f"-p {self.pg_port} -c listen_addresses=127.0.0.1 "
                 f"-c unix_socket_directories={self.pg_dir}", "start"]
            )  # fmt: skip
        except subprocess.CalledProcessError as e:
            raise ClusterError(f"PostgreSQL: {e.cmd}: {e.stderr or e.stdout}") from e
        self._pg_started = True
        pwfile.unlink()
        # As the postgres image does with POSTGRES_DB, then its init script (auth database).
        env = {
            **self._base_env(),
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.pg_port),
            "PGPASSWORD": self.postgres_password,
            "POSTGRES_USER": self.postgres_user,
            "POSTGRES_DB": self.postgres_db,
            "MLFLOW_AUTH_DB": self.auth_db,
        }
        for cmd in (
            ["psql", "-v", "ON_ERROR_STOP=1", "-U", self.postgres_user, "-d", "postgres",
             "-c", f'CREATE DATABASE "{self.postgres_db}"'],
            ["sh", str(DOCKER / "postgres" / "10-mlflow-auth-db.sh")],
        ):  # fmt: skip
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
            if res.returncode:
                raise ClusterError(f"PostgreSQL: {' '.join(cmd)}: {res.stderr or res.stdout}")

    # ------------------------------------------------------------------ MLflow

    def _start_mlflow(self) -> None:
        env = {
            **self._base_env(),
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.pg_port),
            "POSTGRES_USER": self.postgres_user,
            "POSTGRES_PASSWORD": self.postgres_password,
            "POSTGRES_DB": self.postgres_db,
            "MLFLOW_AUTH_DB": self.auth_db,
            "MLFLOW_AUTH_ADMIN_USERNAME": self.admin_user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.flask_secret,
            "MLFLOW_ARTIFACTS_DESTINATION": str(self.artifacts),
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(self.mlflow_port),
            "MLFLOW_WORKERS": str(self.mlflow_workers),
            "TMPDIR": str(self._tmp),  # the auth config file (holds the DB password)
        }
        self._spawn("mlflow", [sys.executable, str(DOCKER / "mlflow_entrypoint.py")], env)

    # ------------------------------------------------------------------ Ray

    def _start_ray(self) -> None:
        common = {**self._base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.ray_token}
        head_env = {
            **common,
            "RAY_GCS_PORT": str(self.gcs_port),
            "RAY_DASHBOARD_HOST": "127.0.0.1",
            "RAY_DASHBOARD_PORT": str(self.dashboard_port),
            "RAY_NODE_IP": "127.0.0.1",
            "RAY_NUM_CPUS": str(self.head_cpus),
        }
        # Two nodes on one machine: give each its own temp dir and the ports whose defaults
        # are fixed (the containers each have their own network namespace).
        self._spawn(
            "ray-head",
            ["sh", str(DOCKER / "ray-node.sh"), "head", "--temp-dir", str(self._tmp / "h"),
             "--ray-client-server-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()), "--num-gpus", "0"],
            head_env,
        )  # fmt: skip
        # The worker needs the head's GCS only (not its dashboard).
        self._wait("ray-head", lambda: _port_open(self.gcs_port))
        worker_env = {
            **common,
            "RAY_HEAD_ADDRESS": self.gcs_address,
            "RAY_NODE_IP": "127.0.0.1",
            "RAY_NUM_CPUS": str(self.worker_cpus),
        }
        self._spawn(
            "ray-worker",
            ["sh", str(DOCKER / "ray-node.sh"), "worker", "--temp-dir", str(self._tmp / "w"),
             "--dashboard-agent-listen-port", str(free_port()), "--num-gpus", "0"],
            worker_env,
        )  # fmt: skip

    def _ray_ready(self, nodes: int) -> bool:
        """The job API answers (with the token) and ``nodes`` nodes are alive."""
        import json

        req = urllib.request.Request(
            f"{self.dashboard_url}/nodes?view=summary",
            headers={"Authorization": f"Bearer {self.ray_token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                data = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        summary = data.get("data", {}).get("summary", [])
        alive = [n for n in summary if n.get("raylet", {}).get("state") == "ALIVE"]
        return len(alive) >= nodes

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self._procs[name] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.root,
                start_new_session=True,  # one process group per service: stopped together
            )
        finally:
            log.close()

    def _wait(self, name: str, ready) -> None:
        proc = self._procs[name]
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterError(
            f"{name} not ready after {self.startup_timeout:g}s:\n{self.log_tail(name)}"
        )

    def log_tail(self, name: str, n: int = 40) -> str:
        try:
            lines = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _kill_strays(self) -> None:
        """Ray processes of this cluster that left their process group (found by temp dir)."""
        try:
            import psutil
        except ImportError:
            return
        marker = str(self._tmp)
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(marker in part for part in p.info["cmdline"] or ()):
                    p.kill()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a service started in its own session: SIGTERM its leader (``ray start --block``
    then drains and stops its node itself), then SIGTERM and finally SIGKILL what is left of
    its process group."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster; Ctrl-C stops it and removes its data")
    up.add_argument("--dir", help="logs, artifacts and cluster.env (default: a new temp dir)")
    up.add_argument("--head-cpus", type=int, default=1)
    up.add_argument("--worker-cpus", type=int, default=1)
    args = parser.parse_args(argv)

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="compsweep-cluster-"))
    cluster = LocalCluster(root, head_cpus=args.head_cpus, worker_cpus=args.worker_cpus)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        cluster.start()
        env_file = root / "cluster.env"
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in cluster.client_env().items()))
        env_file.chmod(0o600)
        print(
            f"MLflow UI/API : {cluster.mlflow_uri}  (user {cluster.admin_user}, password in {env_file})\n"
            f"Ray dashboard : {cluster.dashboard_url}  (job API; GCS at {cluster.gcs_address})\n"
            f"PostgreSQL    : 127.0.0.1:{cluster.pg_port}\n"
            f"logs          : {cluster.logs}\n\n"
            f"source {env_file}\n"
            f"{shlex.join(cluster.submit_command('SPEC', root.resolve() / 'results'))}\n"
            f"  (tracks into {cluster.mlflow_uri}: MLFLOW_TRACKING_URI in {env_file.name})\n\n"
            "Ctrl-C stops the cluster.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
