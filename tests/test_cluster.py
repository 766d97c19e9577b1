"""Sweeps on a real two-node Ray cluster on this machine (``ray start --head`` + ``ray start``).

The head has 1 CPU and 1 fake GPU (``--num-gpus=1``; trials train on the CPU), the worker
1 CPU. A sweep sent with ``compsweep submit`` (``ray job submit``) runs its 1-CPU trials on
both nodes; a sweep of ``{cpus: 0.25, gpus: 0.5}`` trials, run with ``compsweep run`` against
``RAY_ADDRESS``, packs two trials per GPU and never more. Where each trial ran, and on which
GPU, is read back from the ``compsweep.ray_node_id`` / ``compsweep.gpu_ids`` tags of its MLflow
run; when it ran, from the run's start and end times.

Token authentication stays on (Ray's default): the ``ray`` / ``compsweep`` clients get
``RAY_AUTH_MODE=token`` and find the token in ``~/.ray/auth_token``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray_cluster import LocalRayCluster
from sweep_helpers import sweep_runs, tiny_spec

pytestmark = pytest.mark.integration

COMPSWEEP = str(Path(sys.executable).parent / "compsweep")


@pytest.fixture(scope="module")
def cluster():
    c = LocalRayCluster()
    try:
        c.start_head(num_cpus=1, num_gpus=1)
        c.add_worker(num_cpus=1)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def node_kinds(cluster) -> dict[str, str]:
    """node id -> "head" / "worker", for the cluster's alive nodes."""
    nodes = cluster.wait_for_nodes(2)
    assert len(nodes) == 2, nodes
    return {n["node_id"]: "head" if n["is_head_node"] else "worker" for n in nodes}


def _run(cmd: list[str], cluster: LocalRayCluster, cwd: Path, **env: str) -> str:
    """Run a compsweep command to the end; on failure, fail with its output and the node logs."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=cluster.env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        logs = "\n".join(f"--- {n.name} ---\n{n.log_tail(20)}" for n in cluster.nodes)
        pytest.fail(
            f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-6000:]}\n{logs}"
        )
    return proc.stdout


def _finished_children(uri: str, experiment: str) -> list:
    parents, children = sweep_runs(uri, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", parents
    assert len(children) == 4, [r.data.tags.get("compsweep.trial_id") for r in children]
    assert all(r.info.status == "FINISHED" for r in children), [r.info.status for r in children]
    return children


def _max_overlap(runs: list) -> int:
    """The largest number of runs whose [start, end] times contain a common instant."""
    events = sorted(
        [(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs],
        key=lambda e: (e[0], e[1]),  # an end at the instant another starts is no overlap
    )
    now = best = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def test_submit_runs_trials_on_both_nodes(cluster, node_kinds, mlflow_server, tmp_path):
    work = tmp_path / "job"  # the folder `compsweep submit` ships: the spec alone
    work.mkdir()
    # Trials of a few seconds each: long enough that a worker node slow to set up the job's
    # environment (a loaded host) still gets one before the head has run them all.
    spec = tiny_spec("cluster-nodes", mlflow_server.uri, str(tmp_path / "results"),
                     trials=4, concurrent=2, steps=500, n_train=256)  # fmt: skip
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))

    out = _run(
        [COMPSWEEP, "submit", "spec.yaml", "--address", cluster.dashboard_url,
         "--working-dir", str(work), "--python", sys.executable],
        cluster,
        cwd=work,
    )  # fmt: skip

    assert "ray job submit" in out and "succeeded" in out, out[-3000:]
    children = _finished_children(mlflow_server.uri, "cluster-nodes")
    used = {r.data.tags["compsweep.ray_node_id"] for r in children}
    # 1 CPU per node and 2 trials at a time: the second trial can only go to the other node.
    assert used == set(node_kinds), (used, node_kinds)
    # The job ran in a copy of `work`; its sweep state went to the absolute storage path.
    assert len(list((tmp_path / "results").glob("*/compsweep.json"))) == 1


def test_half_gpu_trials_pack_two_per_gpu(cluster, node_kinds, mlflow_server, tmp_path):
    spec = tiny_spec("cluster-gpus", mlflow_server.uri, str(tmp_path / "results"),
                     trials=4, concurrent=4, steps=200, n_train=256)  # fmt: skip
    # CPUs would let all four trials onto the head at once: only the GPU limits them to two.
    spec["resources"] = {"cpus": 0.25, "gpus": 0.5}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))

    _run([COMPSWEEP, "run", "spec.yaml"], cluster, cwd=tmp_path, RAY_ADDRESS=cluster.address)

    children = _finished_children(mlflow_server.uri, "cluster-gpus")
    assert [r.data.tags["compsweep.gpu_ids"] for r in children] == ["0"] * 4
    assert {node_kinds[r.data.tags["compsweep.ray_node_id"]] for r in children} == {"head"}
    assert _max_overlap(children) == 2, [(r.info.start_time, r.info.end_time) for r in children]
