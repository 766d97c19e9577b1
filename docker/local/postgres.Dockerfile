# A stand-in for Docker Hub's postgres:15-bookworm on a machine without Docker Hub: Debian's
# PostgreSQL 15 with an entrypoint that honours the same settings the compose file uses
# (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, /docker-entrypoint-initdb.d/*.sh on an empty
# data directory). Selected with POSTGRES_IMAGE in .env; scripts/docker_e2e.py builds it.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
# Debian stable's current packages (security updates included), not frozen versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p "$PGDATA" /docker-entrypoint-initdb.d /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
# The Debian package's user (its uid is assigned by the package).
# hadolint ignore=DL3066
USER postgres
EXPOSE 5432
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
