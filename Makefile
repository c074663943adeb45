# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite-blob

.PHONY: demo demo-clean deploy-local deploy-local-clean test test-fast bench bootstrap clean

bootstrap: $(STAMP) $(AZURITE)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing the pinned Python dependencies (a minute or two the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e ".[test,deploy]"
	@touch $(STAMP)

$(AZURITE): package.json
	@echo "==> installing the Azure Storage emulator (azurite, pinned in package.json)"
	@npm install --no-audit --no-fund --loglevel=error
	@touch $(AZURITE)

demo: bootstrap
	@$(PY) -m scripts.demo

demo-clean:
	rm -rf .demo

# The production topology as plain processes: PostgreSQL, the code server, the daemon and the
# webserver, with deploy/dagster.yaml and deploy/workspace.yaml (docs/deployment.md).
deploy-local: bootstrap
	@$(PY) -m scripts.deploy_local

deploy-local-clean:
	@$(PY) -c "from scripts.topology import Postgres, default_pg_folder; Postgres(default_pg_folder()).remove()"
	rm -rf .deploy

# The whole suite: unit tests, Azurite integration tests, and the end-to-end tests
# against a real `dagster dev` in headless Chromium. Each session starts and stops
# its own Azurite on a free loopback port.
test: bootstrap
	@scripts/ensure-chromium.sh
	@$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the end-to-end browser/daemon tests.
test-fast: bootstrap
	@$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

bench: bootstrap
	@$(PY) -m bench.run

clean:
	rm -rf $(VENV) node_modules .demo .deploy .pytest_cache
