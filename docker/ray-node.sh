#!/bin/sh
# Run one Ray node of a compsweep cluster in the foreground (`ray start --block`).
#
#   ray-node.sh head   [more `ray start` options]
#   ray-node.sh worker [more `ray start` options]
#
# The same script runs in the ray-head / ray-worker containers of docker-compose.yml and,
# without containers, under scripts/local_cluster.py.
#
# Environment:
#   RAY_AUTH_MODE=token, RAY_AUTH_TOKEN   the cluster's shared token (from .env)
#   RAY_GCS_PORT           head: GCS port (default 6379)
#   RAY_DASHBOARD_HOST     head: dashboard + job API bind address (default 0.0.0.0)
#   RAY_DASHBOARD_PORT     head: dashboard + job API port (default 8265)
#   RAY_HEAD_ADDRESS       worker: the head's GCS address (default ray-head:6379)
#   RAY_NODE_IP            address other nodes use to reach this one (default: detected)
#   RAY_NUM_CPUS, RAY_NUM_GPUS   resources to offer (default: detected)
#   RAY_NODE_PORTS         "fixed": the head uses fixed ports (6380-6385, client 10001, worker
#                          processes 10002-10031) for firewall rules (docker/compose.multihost.yml)
set -eu

role=${1:-}
[ $# -gt 0 ] && shift
case "$role" in
head)
    set -- --head \
        --port "${RAY_GCS_PORT:-6379}" \
        --dashboard-host "${RAY_DASHBOARD_HOST:-0.0.0.0}" \
        --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" \
        "$@"
    if [ "${RAY_NODE_PORTS:-}" = fixed ]; then
        set -- --node-manager-port 6380 --object-manager-port 6381 \
            --dashboard-agent-grpc-port 6382 --dashboard-agent-listen-port 6383 \
            --runtime-env-agent-port 6384 --metrics-export-port 6385 \
            --ray-client-server-port 10001 --min-worker-port 10002 --max-worker-port 10031 \
            "$@"
    fi
    ;;
worker)
    set -- --address "${RAY_HEAD_ADDRESS:-ray-head:6379}" "$@"
    ;;
*)
    echo "usage: ray-node.sh head|worker [ray start options]" >&2
    exit 2
    ;;
esac
if [ -n "${RAY_NODE_IP:-}" ]; then set -- --node-ip-address "$RAY_NODE_IP" "$@"; fi
if [ -n "${RAY_NUM_CPUS:-}" ]; then set -- --num-cpus "$RAY_NUM_CPUS" "$@"; fi
if [ -n "${RAY_NUM_GPUS:-}" ]; then set -- --num-gpus "$RAY_NUM_GPUS" "$@"; fi

echo "ray-node.sh: ray start --block --disable-usage-stats $*"
exec ray start --block --disable-usage-stats "$@"
