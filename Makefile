# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint sysdeps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests read: real Fashion-MNIST (IDX files) for the loader test.
sysdeps:
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi; \
	fi

demo: $(STAMP)
	$(BIN)/compsweep run sweeps/specs/digits_demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) sysdeps lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) mlruns mlflow.db .pytest_cache
