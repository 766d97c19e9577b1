"""Start and stop a real ``mlflow server`` process for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real MLflow tracking server (SQLite store, proxied artifacts) in a subprocess.

    ``stop()`` and ``start()`` keep the port and the store, so a test can simulate an outage
    and bring the same server back.
    """

    def __init__(self, root: Path, port: int | None = None, startup_timeout: float = 120.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.log_path = self.root / "server.log"
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        mlflow = Path(sys.executable).parent / "mlflow"
        return [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            # One uvicorn worker: the machine is small and tests need no concurrency.
            "--workers",
            "1",
        ]

    def start(self) -> None:
        """Start (or restart) the server and wait until ``/health`` answers."""
        if self.running:
            return
        env = dict(os.environ)
        # The job runner (huey consumers) is not needed and costs processes and CPU.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open while it runs)
        # A new session so stop() can signal the server and its uvicorn child together.
        self._proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self._proc.returncode}; see {self.log_path}:\n"
                    + self.log_tail()
                )
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"mlflow server not healthy after {self.startup_timeout}s; see {self.log_path}:\n"
            + self.log_tail()
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server (its whole process group) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # The uvicorn child may outlive the parent briefly; make sure the port is closed.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._port_open():
            time.sleep(0.2)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
