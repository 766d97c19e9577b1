# Two entry points: `make demo` (the main job) and `make test` (the test suite); beside them
# `make test-fast` (the quick tier, no integration tests) and `make lint`.
# All of them create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-docker lint sysdeps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests use: real Fashion-MNIST (IDX files) for the loader test;
# PostgreSQL, docker-compose (validates the compose file, no engine needed) and Chromium for
# the deployment tests. Installed only when missing.
SYSDEPS_CHECK = [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] \
	&& command -v docker-compose >/dev/null && command -v chromium >/dev/null \
	&& ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
SYSDEPS = dataset-fashion-mnist docker-compose chromium fonts-dejavu-core postgresql
sysdeps:
	@if ! { $(SYSDEPS_CHECK); }; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $(SYSDEPS); \
	fi

demo: $(STAMP)
	$(BIN)/compsweep run sweeps/specs/digits_demo.yaml

# Lint, formatting, and types ([tool.mypy] in pyproject.toml: strict on trainers/ and
# search_spaces/).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) sysdeps lint
	$(BIN)/pytest -q

# The quick tier while changing code: every test except those marked integration (a real Ray
# runtime, a real MLflow server, a cluster) or slow, spread over the CPUs (pytest-xdist).
# Lint is separate: `make lint`.
test-fast: $(STAMP) sysdeps
	$(BIN)/pytest -q -n auto -m "not integration and not slow"

# The compose cluster on real containers, end to end (scripts/docker_e2e.py): builds the images,
# brings the cluster up, runs a sweep through a killed worker and a restarted MLflow, checks
# MLflow, PostgreSQL and the UI, then `down -v`. Starts the Docker engine when absent (root).
test-docker: $(STAMP) sysdeps
	$(BIN)/python scripts/docker_e2e.py

clean:
	rm -rf $(VENV) mlruns mlflow.db .pytest_cache
