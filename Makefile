# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create/reuse .venv, install torch==2.13.0 first (so pip never resolves a CUDA build on
# a CPU box that has a local wheel), then the project with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-output
STAMP := $(VENV)/.openic-installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,plots,onnx,mlflow,fast]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/openic demo --dir $(DEMO_DIR)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/all.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
