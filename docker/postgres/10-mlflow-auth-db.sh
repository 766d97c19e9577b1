#!/bin/sh
# Second database of the cluster's PostgreSQL: MLflow's users and permissions (basic auth).
# The tracking data lives in POSTGRES_DB, created by the postgres image itself.
# Run once, on an empty data volume, by the postgres image (/docker-entrypoint-initdb.d/),
# and by scripts/local_cluster.py (with PGHOST, PGPORT and PGPASSWORD set).
set -eu
auth_db=${MLFLOW_AUTH_DB:-mlflow_auth}
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-mlflow}" \
    --set=auth_db="$auth_db" <<'SQL'
CREATE DATABASE :"auth_db";
SQL
