"""Joining or starting the Ray cluster a sweep runs on, and checking it can run a trial.

Ray is imported inside the functions that use it: ``compsweep submit`` needs only
:func:`ray_auth_env` and must start fast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sweeps.quiet import route_libraries

if TYPE_CHECKING:  # the spec pulls in torch: not for `compsweep submit`
    from sweeps.spec import SweepSpec

# The Ray job a submitted sweep runs in (set by `compsweep submit` for the driver).
RAY_JOB_ENV = "COMPSWEEP_RAY_JOB"


def ray_auth_env() -> dict[str, str]:
    """Environment a Ray client needs for a cluster with token authentication (Ray's default).

    A client finds the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) but uses it only with ``RAY_AUTH_MODE=token``: set that when a token
    is at hand and the user has not chosen a mode.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return {}
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
        return {"RAY_AUTH_MODE": "token"}
    return {}


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the local Ray instance started inside this block listen on 127.0.0.1 only.

    Ray resolves a node address of 127.0.0.1 to the machine's routable address and binds its
    servers there and on all interfaces; it keeps loopback only when clusters are off (its
    setting for single-machine platforms). That setting is read by this process (a module
    constant) and by the processes Ray starts (the environment), so set both while Ray starts,
    and put them back afterwards.
    """
    import ray._private.ray_constants as ray_constants  # Ray at call (see the module's doc)

    var = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved_env, saved_const = os.environ.get(var), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[var] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved_env


def connect_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    env_vars: dict[str, str] | None = None,
) -> None:
    """Join the cluster at ``address`` / ``RAY_ADDRESS`` (as inside ``ray job submit``), else
    start a Ray of our own on this machine, on loopback only, whatever cluster ``/tmp/ray``
    remembers. ``env_vars`` reach the trials (a job's own variables already do)."""
    import ray  # at call (see the module's doc)

    route_libraries()  # Ray's terminal handler exists from its import on
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    runtime_env = {"env_vars": env_vars} if env_vars and not in_job else None
    if address and address != "local":
        os.environ.update(ray_auth_env())
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        with _loopback_only():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, runtime_env=runtime_env)  # fmt: skip
    route_libraries()


def check_resources(spec: SweepSpec, autoscaling: bool = False) -> list[str]:
    """Problems with the per-trial resources on the connected cluster: a request no alive node
    can meet would wait forever. On an autoscaling cluster they are warnings (returned with a
    ``warning:`` prefix), since nodes may still come."""
    import ray  # at call (see the module's doc)

    need = {"CPU": float(spec.resources.cpus), "GPU": float(spec.resources.gpus)}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(res.get(k, 0.0) >= v for k, v in need.items() if v > 0) for res in nodes):
        return []
    have = (
        "; ".join(
            f"node {i}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
            for i, res in enumerate(nodes)
        )
        or "no alive node"
    )
    problems = []
    if need["GPU"] > 0 and not any(res.get("GPU", 0) >= need["GPU"] for res in nodes):
        problems.append(
            f"resources.gpus: {need['GPU']:g} per trial, but no node has that many GPUs ({have})"
        )
    if need["CPU"] > 0 and not any(res.get("CPU", 0) >= need["CPU"] for res in nodes):
        problems.append(
            f"resources.cpus: {need['CPU']:g} per trial, but no node has that many CPUs ({have})"
        )
    if not problems:
        problems.append(
            f"resources: no single node has {need['CPU']:g} CPUs and {need['GPU']:g} GPUs together ({have})"
        )
    if autoscaling:
        return [f"warning: {p} (waiting for the autoscaler)" for p in problems]
    return problems
