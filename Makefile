# The README's two commands. Each first sets up what is missing (scripts/setup-venv.sh: .venv, the torch
# build for this machine, the project), once, and again only when pyproject.toml or constraints.txt changes.
#   make run     the default pipeline: dvc repro
#   make test    the test suite: python -m pytest   (make test PYTEST_ARGS=tests/cli/test_cli.py for one file)
#   make test-fast  the tests that take under a few seconds each (no trainings, servers or Ray): minutes
#   make doctor  what this machine has and lacks for the default run

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
INSTALLED := $(VENV)/.installed
IN_VENV := PATH="$(abspath $(VENV))/bin:$$PATH"

.PHONY: run test test-fast doctor

run: $(INSTALLED)
	$(IN_VENV) dvc repro

test: $(INSTALLED)
	$(IN_VENV) python -m pytest $(PYTEST_ARGS)

test-fast: $(INSTALLED)
	$(IN_VENV) python -m pytest -m "not slow" $(PYTEST_ARGS)

doctor: $(INSTALLED)
	$(IN_VENV) medseg doctor

$(INSTALLED): pyproject.toml constraints.txt scripts/setup-venv.sh
	PYTHON="$(PYTHON)" VENV="$(VENV)" scripts/setup-venv.sh
	touch $@
