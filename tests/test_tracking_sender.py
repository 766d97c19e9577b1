"""sweeps.tracking_sender: retries, content rejections and refused credentials, with a fake
transport (pure logic; the real stores are covered by test_tracking.py)."""

from __future__ import annotations

import threading

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, UNAUTHENTICATED

from sweeps.run_resolution import RunTarget
from sweeps.tracking_buffer import Spool, TrackingBuffer
from sweeps.tracking_sender import Sender


class FakeRun:
    def __init__(self, run_id: str) -> None:
        self.info = type("Info", (), {"run_id": run_id, "status": "RUNNING"})()


class FakeTransport:
    """Stores what it is sent; fails the first ``outages`` requests like a dead server,
    refuses the metric key ``bad`` like MLflow refuses an invalid value."""

    uri = "http://fake"

    def __init__(self, outages: int = 0, refuse: bool = False) -> None:
        self.outages, self.refuse = outages, refuse
        self.stored: list[tuple[str, int]] = []
        self.status: str | None = None
        self.lock = threading.Lock()

    def _request(self) -> None:
        if self.refuse:
            raise MlflowException("bad credentials", error_code=UNAUTHENTICATED)
        if self.outages:
            self.outages -= 1
            raise ConnectionError("connection refused")

    def get_run(self, run_id):
        return FakeRun(run_id)

    def find_runs(self, experiment_id, tags):
        self._request()
        return []

    def create_run(self, experiment_id, tags, run_name, start_time):
        self._request()
        return "run-1"

    def set_running(self, run_id):
        pass

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._request()
        if any(k == "bad" for k, *_ in metrics):
            raise MlflowException("invalid value", error_code=INVALID_PARAMETER_VALUE)
        with self.lock:
            self.stored += [(k, s) for k, _, _, s in metrics]

    def log_artifact(self, run_id, path, artifact_path):
        self._request()

    def metric_steps(self, run_id, key):
        return {s for k, s in self.stored if k == key}

    def set_terminated(self, run_id, status):
        self._request()
        self.status = status

    def close(self):
        pass


def sender(tmp_path, transport: FakeTransport) -> Sender:
    buf = TrackingBuffer(Spool(tmp_path))
    target = RunTarget("0", {"compsweep.trial_id": "t1"}, "t1", {}, 0)
    s = Sender(buf, transport, target, "trial", "t1", flush_interval=0.05, max_backoff=0.05)
    s.start()
    return s


def test_an_outage_delays_but_delivers_each_point_once(tmp_path):
    transport = FakeTransport(outages=3)
    s = sender(tmp_path, transport)
    s.buffer.add_points([("loss", 1.0, 0, step) for step in range(2500)])
    assert s.flush(timeout=10, wait_while_down=True)
    assert s.finish("FINISHED", timeout=10)
    assert sorted(transport.stored) == [("loss", step) for step in range(2500)]
    assert transport.status == "FINISHED" and s.last_error is None and s.errors == []


def test_a_rejected_point_is_dropped_alone(tmp_path):
    transport = FakeTransport()
    s = sender(tmp_path, transport)
    s.buffer.add_points([("loss", 1.0, 0, 0), ("bad", 1.0, 0, 0), ("loss", 1.0, 0, 1)])
    assert s.finish("FINISHED", timeout=10)
    assert sorted(transport.stored) == [("loss", 0), ("loss", 1)]
    assert len(s.errors) == 1 and "bad" in s.errors[0]


def test_refused_credentials_stop_the_sender_and_keep_the_data(tmp_path):
    transport = FakeTransport(refuse=True)
    s = sender(tmp_path, transport)
    s.buffer.add_points([("loss", 1.0, 0, 0)])
    assert not s.wait_ready(timeout=10)
    s.thread.join(5)
    assert not s.thread.is_alive()
    assert s.fatal and "refused this trial" in s.fatal and "bad credentials" in s.fatal
    assert len(s.buffer.state()["points"]) == 1
