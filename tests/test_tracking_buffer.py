"""sweeps.tracking_buffer: pending data, deduplication by (key, step), and the picklable state
that a trial's checkpoint carries (``tracker.pkl``). Pure bookkeeping: no store involved."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

from sweeps.tracking_buffer import PENDING_FILE, Spool, TrackingBuffer


def points(key: str, steps, value: float = 1.0):
    return [(key, value, 1_700_000_000_000 + s, s) for s in steps]


def test_points_stay_pending_until_confirmed(tmp_path):
    buf = TrackingBuffer(Spool(tmp_path))
    buf.add_points(points("loss", range(5)))
    pos, chunk = buf.take_points(3)
    assert (pos, [p[3] for p in chunk]) == (0, [0, 1, 2])
    buf.add_points(points("loss", [5]))  # arrives while the first chunk is in flight
    assert buf.pending_points() == 6
    buf.confirm(pos, len(chunk))
    pos, chunk = buf.take_points(10)  # the rest of the in-flight list, not the new point yet
    assert (pos, [p[3] for p in chunk]) == (3, [3, 4])
    buf.confirm(pos, len(chunk))
    assert [p[3] for p in buf.take_points(10)[1]] == [5]
    buf.confirm(0, 1)
    assert buf.pending_points() == 0 and not buf.has_pending()
    assert buf.take_points(10) == (0, [])


def test_dedup_by_key_and_step_first_value_wins(tmp_path):
    buf = TrackingBuffer(Spool(tmp_path))
    buf.bind_run("run-a", continued=False)
    chunk = points("loss", [0, 1, 1], 1.0) + points("acc", [1])
    new = buf.new_points(chunk, stored_steps=lambda key: set())
    assert [(p[0], p[3]) for p in new] == [("loss", 0), ("loss", 1), ("acc", 1)]
    assert new[1][1] == 1.0  # the first value logged for (loss, 1)
    buf.mark_stored(new)
    assert buf.new_points(points("loss", [1, 2], 9.0), stored_steps=lambda key: set()) == [
        ("loss", 9.0, 1_700_000_000_002, 2)
    ]


def test_continued_run_reads_each_keys_history_once(tmp_path):
    buf = TrackingBuffer(Spool(tmp_path))
    buf.bind_run("run-a", continued=True)
    reads: list[str] = []

    def stored(key: str) -> set[int]:
        reads.append(key)
        return {0, 1, 2}

    assert [p[3] for p in buf.new_points(points("loss", range(5)), stored)] == [3, 4]
    assert [p[3] for p in buf.new_points(points("loss", range(6)), stored)] == [3, 4, 5]
    assert reads == ["loss"]


def test_another_run_forgets_what_the_old_one_held(tmp_path):
    buf = TrackingBuffer(Spool(tmp_path))
    buf.bind_run("run-a", continued=False)
    buf.mark_stored(points("loss", [0]))
    buf.mark_params_sent([("lr", "0.1")])
    buf.bind_run("run-a", continued=False)  # the same run again: knowledge kept
    assert buf.new_points(points("loss", [0]), lambda key: set()) == []
    buf.bind_run("run-b", continued=False)  # the old run was deleted: start over
    assert len(buf.new_points(points("loss", [0]), lambda key: set())) == 1
    assert buf.unsent_params([("lr", "0.1")]) == [("lr", "0.1")]


def test_params_repeated_with_the_same_value_are_not_sent_again(tmp_path):
    buf = TrackingBuffer(Spool(tmp_path))
    buf.mark_params_sent([("lr", "0.1")])
    assert buf.unsent_params([("lr", "0.1"), ("momentum", "0.9")]) == [("momentum", "0.9")]
    assert buf.unsent_params([("lr", "0.3")]) == [("lr", "0.3")]  # changed: let the store refuse


def test_checkpoint_round_trip_on_another_node(tmp_path):
    """state() pickles; restored where the spooled artifact copy is missing, the artifact is
    rebuilt from the bytes inlined in the state, and the run is known to exist already."""
    spool = Spool(tmp_path / "node1")
    buf = TrackingBuffer(spool)
    buf.bind_run("run-a", continued=False)
    buf.add_points(points("loss", range(4)))
    pos, chunk = buf.take_points(2)
    buf.confirm(pos, len(chunk))  # steps 0, 1 sent; 2, 3 pending
    buf.add_op(("params", [("lr", "0.1")]))
    src = tmp_path / "config.yaml"
    src.write_text("model: small_cnn\n")
    buf.add_op(("artifact", str(spool.copy_in(src)), "cfg"))

    state = pickle.loads(pickle.dumps(buf.state()))
    assert state["run_id"] == "run-a" and [p[3] for p in state["points"]] == [2, 3]
    shutil.rmtree(tmp_path / "node1")  # the other node does not have the spooled copy

    again = TrackingBuffer(Spool(tmp_path / "node2"))
    again.restore(state)
    assert again.run_id == "run-a" and again.continued  # check the run's history first
    assert again.pending_points() == 2
    assert again.next_op() == ("params", [("lr", "0.1")])
    again.op_done()
    kind, path, artifact_path = again.next_op()
    assert (kind, artifact_path) == ("artifact", "cfg")
    assert path.startswith(str(tmp_path / "node2"))
    assert Path(path).read_text() == "model: small_cnn\n"


def test_state_of_another_version_is_ignored(tmp_path):
    buf = TrackingBuffer(Spool(tmp_path))
    buf.restore({"version": 0, "run_id": "old", "points": points("loss", [0]), "ops": []})
    assert buf.run_id is None and buf.pending_points() == 0


def test_spool_keeps_unsent_data_for_the_next_tracker(tmp_path):
    spool = Spool(tmp_path / "spool")
    assert spool.load_pending() is None
    spool.save_pending({"version": 1, "run_id": "r", "points": [], "ops": []})
    assert (tmp_path / "spool" / PENDING_FILE).is_file()
    again = Spool(tmp_path / "spool")
    assert again.load_pending()["run_id"] == "r"
    again.clear()
    assert not (tmp_path / "spool").exists()
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / PENDING_FILE).write_bytes(b"\x80\x04trunc")
    assert Spool(tmp_path / "torn").load_pending() is None  # a torn file never stops a trial
