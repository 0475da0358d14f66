# Two entry points on a fresh clone: `make run` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m sweep.run

test: $(VENV)/.installed
	bash scripts/install-test-system-deps.sh
	$(PY) -m pytest -q
