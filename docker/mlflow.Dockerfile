# The MLflow tracking server of a compsweep cluster: PostgreSQL backend store, proxied
# artifacts on a volume, basic authentication (docker/mlflow_entrypoint.py).
#
#   docker build -f docker/mlflow.Dockerfile -t compsweep-mlflow .
#
# MLflow's own version must be the one the trials' clients speak to; keep it in step with
# MLFLOW_VERSION in docker/Dockerfile.

#
# Offline or behind a proxy: the same build arguments and `pip_cert` build secret as
# docker/Dockerfile (PYTHON_IMAGE, PIP_INDEX_URL, PIP_FIND_LINKS).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG MLFLOW_VERSION=3.17.2

FROM ${PYTHON_IMAGE} AS build
ARG MLFLOW_VERSION
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_FIND_LINKS=${PIP_FIND_LINKS}
# The CA bundle secret is mounted for this RUN only; it is in no layer.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install "mlflow[auth]==${MLFLOW_VERSION}" "psycopg[binary]==3.3.9" \
    && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_ARTIFACTS_DESTINATION=/mlflow/artifacts \
    MLFLOW_HOST=0.0.0.0 \
    MLFLOW_PORT=5000
COPY --from=build /opt/venv /opt/venv
COPY docker/mlflow_entrypoint.py /usr/local/bin/mlflow_entrypoint.py
# Artifacts volume: a new volume takes this directory's owner.
RUN chmod 0755 /usr/local/bin/mlflow_entrypoint.py \
    && groupadd --gid 1000 mlflow \
    && useradd --uid 1000 --gid mlflow --create-home --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlflow/artifacts \
    && chown -R mlflow:mlflow /mlflow
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["python", "/usr/local/bin/mlflow_entrypoint.py"]
