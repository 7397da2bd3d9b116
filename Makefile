# canarycast — one entry point per task. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TOOLS_STAMP := .cache/tools/.installed

.PHONY: help venv test demo check lint typecheck stubs clean audit bench soak

help:
	@echo "make demo   train a model on real data, serve it, forecast (one machine)"
	@echo "make test   the whole test suite (creates $(VENV) first)"
	@echo "make soak   long reliability runs (load, fuzz, rolling restarts); figures in docs/soak/"
	@echo "make check  ruff, ruff format, mypy, the import contracts"
	@echo "make stubs  regenerate the gRPC stubs from protos/"
	@echo "make audit  known vulnerabilities of the installed dependencies (needs network)"
	@echo "make bench  the seven benchmark sections (< 20 min on 2 cores) -> bench/results/"

venv: $(STAMP)

# The full set: the base (a client), the `server` extra (serving, training, the demo) and
# `dev` (tests, linters). torch==2.13.0 is pinned in the `server` extra: on these machines that
# is a CPU build on disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,dev]'
	touch $@

test: $(STAMP) $(TOOLS_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# helm and promtool for the chart tests (tests/helm); a tool that cannot be had makes its
# tests skip with the reason, so a failure here does not stop the suite (and is retried).
$(TOOLS_STAMP): scripts/install_tools.sh
	bash scripts/install_tools.sh .cache/tools && touch $@ \
		|| echo "make: some chart tools are missing; their tests will be skipped"

# Not part of `make test`: minutes of load, thousands of fuzz cases, every restart.
SOAK_MINUTES ?= 5
soak: $(STAMP)
	$(PY) -m tests.reliability.soak --minutes $(SOAK_MINUTES) --out docs/soak

demo: $(STAMP)
	$(VENV)/bin/canarycast demo

# lint-imports: the layers' import contracts in pyproject.toml ([tool.importlinter]).
check: lint typecheck
	$(VENV)/bin/lint-imports --no-cache --no-logo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check canarycast server router cli bench tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

stubs: $(STAMP)
	$(PY) scripts/generate_stubs.py

# pip-audit of the exact versions installed in $(VENV) (pip freeze; local version tags such
# as torch's +cpu are dropped so those are looked up too). It needs a vulnerability database
# over the network (AUDIT_SERVICE=pypi or osv), so it is not part of `make test`. --strict:
# a package that could not be looked up fails the audit rather than passing unchecked.
# Findings and what we did about them: docs/security.md.
AUDIT_SERVICE ?= pypi
audit: $(STAMP)
	mkdir -p .cache
	$(PY) -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//' > .cache/audit-requirements.txt
	$(VENV)/bin/pip-audit --requirement .cache/audit-requirements.txt --no-deps --disable-pip \
		--vulnerability-service $(AUDIT_SERVICE) --progress-spinner off --desc on --strict

# Benchmarks: serving vs the bare forward pass and TorchServe, router vs nginx, analysis
# cost, cost growth, accuracy vs statsforecast. TorchServe and statsforecast get their own
# venvs under .cache/bench/ (statsforecast pins pandas<3); nginx comes from apt if missing.
bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .cache build *.egg-info
