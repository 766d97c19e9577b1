"""Only compsweep speaks on the terminal.

Ray, Ray Tune, MLflow and Optuna print their own log lines, hints, boxes and progress bars.
:func:`quiet_libraries` (called once by the command line unless ``-v``) turns off what they
print outside Python logging (Tune's reporter, MLflow's run links and download bars) through
their own settings, and sends every library log record to a :class:`LibraryLog`: kept in
memory until a sweep folder is known, then written to ``<sweep folder>/compsweep.log``. The few
library warnings a user must act on are repeated as one compsweep line each
(:data:`REPHRASED`).

Libraries install their terminal handlers when first imported (Ray on ``import ray``, Optuna
on its first log line), so :func:`route_libraries` is called again after those imports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

LOG_FILE = "compsweep.log"

# Settings read by the libraries themselves (environment: trial workers inherit them).
LIBRARY_ENV = {
    # Tune's newer reporter prints a configuration box and a TensorBoard hint even at verbose=0;
    # the classic one is silent at verbose=0, and compsweep's own progress replaces both.
    "RAY_AIR_NEW_OUTPUT": "0",
    # MLflow then leaves its loggers to the application (ours) instead of a stderr handler.
    "MLFLOW_CONFIGURE_LOGGING": "false",
    # "🏃 View run ... at: ..." lines written straight to stdout after every run ends.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # tqdm bars while `best` downloads each trial's config.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# Loggers that install handlers writing to the terminal.
LIBRARY_LOGGERS = ("ray", "optuna", "mlflow")
# Chatty at INFO (SQL statements, every HTTP connection): warnings only, even in the log file.
NOISY_LOGGERS = ("sqlalchemy", "alembic", "urllib3", "huey", "filelock", "fsspec")

# (pattern in a library warning, the compsweep line that replaces it on the terminal)
REPHRASED: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"No trial is running and no new trial has been started within"),
        "no trial could start for a while: the cluster may lack the CPUs/GPUs a trial asks for "
        "(resources.cpus / resources.gpus in the spec)",
    ),
    (
        re.compile(r"Disk usage|disk space|No space left", re.IGNORECASE),
        "the disk is nearly full: checkpoints and the tracking store may fail to write",
    ),
]

# Library warnings that need nothing from the user (not counted in the closing pointer to the
# log): a local Ray makes its own token; Tune's notes on an interruption, which compsweep
# settles and explains itself (its results come from MLflow, not Tune's result files).
ROUTINE_WARNINGS = re.compile(
    r"Token authentication is enabled for this Ray cluster|Stop signal received"
    r"|Experiment has been interrupted|Failed to fetch metrics for"
)

_active: LibraryLog | None = None


class LibraryLog(logging.Handler):
    """Library log records: buffered until :meth:`attach` names a file, then appended to it.

    Counts warnings and errors, and prints the compsweep line of a :data:`REPHRASED` warning
    once.
    """

    MAX_BUFFERED = 5000

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.path: Path | None = None
        self.warnings = 0
        self._buffer: list[str] = []
        self._file = None
        self._said: set[str] = set()
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a library's malformed record must not break the sweep
            return
        if record.levelno >= logging.WARNING:
            message = record.getMessage()
            if not ROUTINE_WARNINGS.search(message):
                self.warnings += 1
            self._rephrase(message)
        with self._guard:
            if self._file is not None:
                self._file.write(text + "\n")
                self._file.flush()
            elif len(self._buffer) < self.MAX_BUFFERED:
                self._buffer.append(text)

    def _rephrase(self, message: str) -> None:
        for pattern, line in REPHRASED:
            if pattern.search(message) and line not in self._said:
                self._said.add(line)
                print(f"warning: {line}", file=sys.stdout, flush=True)

    def attach(self, path: str | os.PathLike) -> None:
        """Write what was buffered, and every later record, to ``path`` (appending: a resumed
        sweep continues its log). A file that cannot be opened keeps records in memory."""
        with self._guard:
            if self._file is not None:
                self._file.close()
            try:
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (lives with the handler)
            except OSError:
                self._file = None
                return
            self.path = Path(path)
            self._file.write("".join(line + "\n" for line in self._buffer))
            self._file.flush()
            self._buffer.clear()

    def close(self) -> None:
        with self._guard:
            if self._file is not None:
                self._file.close()
                self._file = None
        super().close()


def quiet_libraries() -> LibraryLog:
    """Route the libraries' output to a :class:`LibraryLog` (idempotent); returns it."""
    global _active
    if _active is not None:
        return _active
    for key, value in LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    _active = LibraryLog()
    root = logging.getLogger()
    root.addHandler(_active)
    root.setLevel(logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn(...) of any library → the log file
    route_libraries()
    return _active


def route_libraries() -> None:
    """Take the terminal handlers off the libraries' loggers (and their children's) and let
    their records reach the root logger, hence the log file. Does nothing with ``-v``."""
    if _active is None:
        return
    for name in [*LIBRARY_LOGGERS, *logging.root.manager.loggerDict]:
        if not isinstance(name, str) or not name.startswith(LIBRARY_LOGGERS):
            continue
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        logger.propagate = True
    _route_ray_errors()


def _route_ray_errors() -> None:
    """Ray's driver prints the cluster's error messages (``(raylet) A worker died or was
    killed …``) straight to stdout from a thread of its own, whatever ``log_to_driver`` says:
    send them to the ``ray`` logger (hence the log file) instead. Only once Ray is imported."""
    worker = sys.modules.get("ray._private.worker")
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "compsweep_routed", False):
        return

    def to_log(data: dict, ignore_prefix: bool) -> None:
        if _active is None or data.get("pid") != "raylet":
            original(data, ignore_prefix)
            return
        for line in data.get("lines") or []:
            logging.getLogger("ray").warning("(raylet) %s", line)

    to_log.compsweep_routed = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_log  # type: ignore[union-attr]


@contextlib.contextmanager
def library_prints(logger_name: str) -> Iterator[None]:
    """Inside: what a library prints itself (MLflow's "Successfully registered model ...")
    goes to the log as INFO lines of ``logger_name``. Does nothing with ``-v``."""
    if _active is None:
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        log = logging.getLogger(logger_name)
        for line in buffer.getvalue().splitlines():
            if line.strip():
                log.info("%s", line)


def active_log() -> LibraryLog | None:
    """The library log of this process, or None when the libraries speak (``-v``)."""
    return _active


def attach_log(folder: str | os.PathLike) -> Path | None:
    """Write the library log to ``folder/compsweep.log`` from now on; its path, or None."""
    if _active is None:
        return None
    route_libraries()
    _active.attach(Path(folder) / LOG_FILE)
    return _active.path
