# RunLedger: `make run` starts the embedded stack, `make test` runs lint + the whole suite.
# Everything installs from pyproject.toml into .venv; nothing is installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install run test lint format bench bench-fleet bench-tenancy bench-mlflow schemas clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[server,dev]"
	touch $(STAMP)

run: install
	$(VENV)/bin/runledger up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs services

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -p no:cacheprovider

bench: install
	$(PY) -m bench.run

bench-fleet: install
	$(PY) -m bench.fleet

bench-tenancy: install
	$(PY) -m bench.tenancy

# A real `mlflow server` to compare with: its own venv (mlflow pins pyarrow<26), inside .venv.
bench-mlflow: install
	$(PYTHON) -m venv $(VENV)/mlflow-server
	$(VENV)/mlflow-server/bin/pip install --quiet -e ".[bench-mlflow]"
	$(PY) -m bench.mlflow_compat --mlflow $(VENV)/mlflow-server/bin/mlflow

bench-mlflow-search: install
	$(PY) -m bench.mlflow_search

schemas: install
	$(VENV)/bin/runledger schemas

clean:
	rm -rf $(VENV) .runledger .mypy_cache .ruff_cache
