# Two commands do all set-up: `make run` (the service, locally) and `make test` (lint + tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
INFRA_VENV := .venv-infra
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run test lint infra-check format bench clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Distillery needs Python 3.11 (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

local.settings.json: local.settings.json.template
	test -f $@ || cp $< $@

run: setup local.settings.json
	$(PY) -m local_host --azurite

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

$(INFRA_VENV)/.installed: requirements-infra.txt
	test -x $(INFRA_VENV)/bin/python || $(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-infra.txt
	touch $@

# checkov on the Bicep (offline: --skip-download); every skipped check is justified next to its resource.
infra-check: $(INFRA_VENV)/.installed
	$(INFRA_VENV)/bin/checkov --directory infra --framework bicep secrets --skip-download --compact --quiet

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint infra-check
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.capture

clean:
	rm -rf $(VENV) $(INFRA_VENV) node_modules .azurite .pytest_cache .ruff_cache
