# canarycast — one entry point per task. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv test demo check lint typecheck stubs clean

help:
	@echo "make demo   train a model on real data, serve it, forecast (one machine)"
	@echo "make test   the whole test suite (creates $(VENV) first)"
	@echo "make check  ruff + mypy"
	@echo "make stubs  regenerate the gRPC stubs from protos/"

venv: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml: on these machines that is a CPU build on disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/canarycast demo

check: lint typecheck

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check canarycast server router tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

stubs: $(STAMP)
	$(PY) scripts/generate_stubs.py

clean:
	rm -rf $(VENV) .cache build *.egg-info
