"""Docker engine, base images and the compsweep images, for ``scripts/docker_e2e.py``.

Works on a normal machine (Docker Hub and PyPI reachable: the Dockerfiles' public defaults) and
on one without Docker Hub, behind a TLS-intercepting proxy, with local wheels:

* no Docker engine: ``apt-get install docker.io`` (as root) and ``dockerd`` in the background;
* no ``python:3.11.13-slim-bookworm`` / ``postgres:15.13-bookworm`` to pull: stand-ins built
  from a Debian base made with ``debootstrap`` (``docker/local/``);
* ``COMPSWEEP_PIP_CERT`` (default: the system CA bundle) goes into the build as the
  ``pip_cert`` secret, never into a layer;
* ``COMPSWEEP_WHEELS`` (default: pip's own ``find-links`` directory): served to the build over
  HTTP on 127.0.0.1; a CPU torch wheel found there is the torch of the CPU image (and a CPU
  torchvision wheel its torchvision; without one the image has no torchvision).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_PYTHON = "python:3.11.13-slim-bookworm"
PUBLIC_POSTGRES = "postgres:15.13-bookworm"
LOCAL_DEBIAN = "compsweep-local/debian:bookworm"
LOCAL_PYTHON = "compsweep-local/python:3.11-bookworm"
LOCAL_POSTGRES = "compsweep-local/postgres:15-bookworm"
DEBIAN_MIRROR = os.environ.get("COMPSWEEP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# A marker in the CA bundle handed to the build: it must appear in no saved image.
PLANTED_SECRET = "compsweep-planted-build-secret-7c1e0b9d4a"


class E2EError(RuntimeError):
    """A step of the end-to-end run failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], *, timeout: float = 600, check: bool = True, capture: bool = True,
        env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """Run ``cmd``; on failure raise E2EError with the command and the end of its output."""
    try:
        res = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, env=env,
                             input=input)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise E2EError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from e
    if check and res.returncode != 0:
        out = ((res.stdout or "") + (res.stderr or ""))[-4000:] if capture else ""
        raise E2EError(f"exit {res.returncode}: {' '.join(cmd)}\n{out}")
    return res


# ------------------------------------------------------------------------------ engine


def _client_builds_with_buildkit(docker: str) -> bool:
    """A client that can run ``DOCKER_BUILDKIT=1 docker build`` (secrets need BuildKit): one
    with the buildx plugin, or a pre-23 client with BuildKit built in."""
    if run([docker, "buildx", "version"], check=False, timeout=30).returncode == 0:
        return True
    res = run([docker, "version", "--format", "{{.Client.Version}}"], check=False, timeout=30)
    m = re.match(r"(\d+)\.", res.stdout.strip())
    return bool(m) and int(m[1]) < 23


def docker_cli() -> str:
    """The docker client to use (``COMPSWEEP_DOCKER`` to choose one)."""
    if os.environ.get("COMPSWEEP_DOCKER"):
        return os.environ["COMPSWEEP_DOCKER"]
    candidates = [c for c in (shutil.which("docker"), "/usr/bin/docker") if c and Path(c).exists()]
    for c in dict.fromkeys(candidates):
        if _client_builds_with_buildkit(c):
            return c
    raise E2EError(
        f"no docker client that builds with BuildKit among {candidates}: install the buildx "
        "plugin (docker-buildx) or Debian's docker.io"
    )


def ensure_engine() -> str:
    """Install (Debian, as root) and start the Docker engine when absent; return the client."""
    if not shutil.which("dockerd") and not shutil.which("docker"):
        _apt_install("docker.io")
    docker = shutil.which("docker") or "/usr/bin/docker"
    if run([docker, "info"], check=False, timeout=60).returncode != 0:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            _apt_install("docker.io")
            dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if os.geteuid() != 0:
            raise E2EError("the Docker engine is not running and starting it needs root")
        logfile = Path(tempfile.gettempdir()) / "compsweep-dockerd.log"
        log(f"starting dockerd (log: {logfile})")
        with open(logfile, "ab") as f:
            subprocess.Popen([dockerd], stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 90
        while run([docker, "info"], check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise E2EError(f"dockerd did not answer within 90 s; see {logfile}")
            time.sleep(2)
    return docker_cli()


def compose_cli(docker: str) -> list[str]:
    """``docker compose`` (v2) when present, else docker-compose 1.29 (installed if absent)."""
    if run([docker, "compose", "version"], check=False, timeout=30).returncode == 0:
        return [docker, "compose"]
    if not shutil.which("docker-compose"):
        _apt_install("docker-compose")
    return [shutil.which("docker-compose") or "docker-compose"]


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise E2EError(f"install {' '.join(packages)} (needs root and apt-get)")
    log(f"apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], timeout=600, env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        timeout=1200, env=env)  # fmt: skip


# ------------------------------------------------------------------------------ base images


def has_image(docker: str, image: str) -> bool:
    return run([docker, "image", "inspect", image], check=False, timeout=60).returncode == 0


def _pullable(docker: str, image: str) -> bool:
    if has_image(docker, image):
        return True
    res = run([docker, "pull", image], check=False, timeout=300)
    return res.returncode == 0


def base_images(docker: str) -> tuple[str, str]:
    """(Python base, PostgreSQL image): the public ones when they can be pulled, else local
    stand-ins (made once, then reused)."""
    python = os.environ.get("COMPSWEEP_PYTHON_IMAGE")
    postgres = os.environ.get("COMPSWEEP_POSTGRES_IMAGE")
    if python and postgres:
        return python, postgres
    if _pullable(docker, PUBLIC_PYTHON) and _pullable(docker, PUBLIC_POSTGRES):
        return python or PUBLIC_PYTHON, postgres or PUBLIC_POSTGRES
    log("Docker Hub out of reach: local stand-ins for the Python and PostgreSQL images")
    _local_debian(docker)
    if not has_image(docker, LOCAL_PYTHON):
        build(docker, "docker/local/python.Dockerfile", LOCAL_PYTHON, context=ROOT / "docker/local",
              args={"DEBIAN_IMAGE": LOCAL_DEBIAN})  # fmt: skip
    if not has_image(docker, LOCAL_POSTGRES):
        build(docker, "docker/local/postgres.Dockerfile", LOCAL_POSTGRES,
              context=ROOT / "docker/local", args={"DEBIAN_IMAGE": LOCAL_DEBIAN})  # fmt: skip
    return python or LOCAL_PYTHON, postgres or LOCAL_POSTGRES


def _local_debian(docker: str) -> None:
    if has_image(docker, LOCAL_DEBIAN):
        return
    if not shutil.which("debootstrap"):
        _apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="compsweep-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap bookworm from {DEBIAN_MIRROR} (about 2 minutes)")
        run(["nice", "debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            timeout=1800)  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run([docker, "import", "-", LOCAL_DEBIAN], stdin=tar.stdout,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise E2EError(f"docker import of the Debian rootfs failed: {imp.stderr[-2000:]}")


# ------------------------------------------------------------------------------ build


@dataclass
class BuildInputs:
    """What the compsweep builds get on this machine beyond the Dockerfiles' defaults."""

    args: dict[str, str] = field(default_factory=dict)
    cert: Path | None = None  # the CA bundle secret (with the planted marker)
    network_host: bool = False  # the build reaches the wheel server on 127.0.0.1


def _pip_config(key: str) -> str:
    res = run([sys.executable, "-m", "pip", "config", "get", key], check=False, timeout=60)
    return res.stdout.strip() if res.returncode == 0 else ""


def _cpu_wheels(wheels: Path) -> tuple[str, str] | None:
    """(torch version, torchvision version or "") of CPU wheels for CPython 3.11 there. PyPI's
    torchvision is a CUDA build (it bundles libcudart and fails to import next to a CPU torch):
    without a local CPU torchvision wheel the image goes without torchvision."""
    torch = sorted(wheels.glob("torch-*+cpu-cp311-cp311-*linux*x86_64.whl"))
    if not torch:
        return None
    vision = sorted(wheels.glob("torchvision-*+cpu-cp311-cp311-*linux*x86_64.whl"))
    return torch[-1].name.split("-")[1], vision[-1].name.split("-")[1] if vision else ""


class _WheelServer:
    """A directory of wheels over HTTP on 127.0.0.1 (pip's --find-links) while builds run."""

    # A fixed port: the URL is a build argument, and a new value would void the layer cache.
    PORT = int(os.environ.get("COMPSWEEP_WHEELS_PORT", "47391"))

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.PORT), handler)
        except OSError:  # taken: any port works, the build just starts from scratch
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def build_inputs(python_image: str, workdir: Path) -> tuple[BuildInputs, _WheelServer | None]:
    inputs = BuildInputs(args={"PYTHON_IMAGE": python_image})
    cert = Path(os.environ.get("COMPSWEEP_PIP_CERT") or _pip_config("global.cert")
                or "/etc/ssl/certs/ca-certificates.crt")  # fmt: skip
    if cert.is_file():
        # PEM readers skip text outside the certificate blocks: the marker rides along.
        inputs.cert = workdir / "pip-cert.pem"
        inputs.cert.write_text(cert.read_text() + f"\n# {PLANTED_SECRET}\n")
        inputs.cert.chmod(0o600)
    wheels = Path(os.environ.get("COMPSWEEP_WHEELS") or _pip_config("global.find-links") or "/nonexistent")  # fmt: skip
    server = None
    torch = _cpu_wheels(wheels) if wheels.is_dir() else None
    if torch:
        server = _WheelServer(wheels)
        inputs.network_host = True
        inputs.args.update({
            "PIP_FIND_LINKS": server.url,
            "TORCH_INDEX_URL": "https://pypi.org/simple",
            "TORCH_VERSION": torch[0],
            "TORCHVISION_VERSION": torch[1],
        })  # fmt: skip
        log(f"CPU torch {torch[0]} from {wheels}; torchvision: {torch[1] or 'none (no CPU wheel)'}")
    return inputs, server


def build(docker: str, dockerfile: str, tag: str, *, context: Path = ROOT,
          target: str | None = None, args: dict[str, str] | None = None,
          inputs: BuildInputs | None = None) -> float:  # fmt: skip
    """``docker build`` with BuildKit, niced; returns the seconds it took."""
    cmd = ["nice", docker, "build", "-f", str(ROOT / dockerfile), "-t", tag, "--progress=plain"]
    if target:
        cmd += ["--target", target]
    for k, v in {**(inputs.args if inputs else {}), **(args or {})}.items():
        cmd += ["--build-arg", f"{k}={v}"]
    if inputs and inputs.cert:
        cmd += ["--secret", f"id=pip_cert,src={inputs.cert}"]
    if inputs and inputs.network_host:
        cmd += ["--network", "host"]
    cmd.append(str(context))
    log(f"building {tag} ({dockerfile}{', target ' + target if target else ''})")
    t0 = time.monotonic()
    run(cmd, timeout=3600, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    seconds = time.monotonic() - t0
    log(f"built {tag} in {seconds:.0f} s")
    return seconds


def image_size_mb(docker: str, image: str) -> float:
    res = run([docker, "image", "inspect", "--format", "{{.Size}}", image], timeout=60)
    return int(res.stdout.strip()) / 1e6
