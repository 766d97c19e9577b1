# A stand-in for Docker Hub's python:3.11-slim-bookworm on a machine without Docker Hub: Debian
# bookworm's own Python 3.11 on a base image made with debootstrap (scripts/docker_e2e.py makes
# both). Only for building the compsweep images where the public image cannot be pulled:
#
#   docker build -f docker/local/python.Dockerfile --build-arg DEBIAN_IMAGE=<local debian> \
#       -t compsweep-local/python:3.11-slim-bookworm docker/local
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# Same layout as the official image: `python` on PATH, venv available, CA certificates.
# Debian stable's current packages (security updates included), not frozen versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
CMD ["python3"]
