# RunLedger: `make run` starts the embedded stack, `make test` runs lint + the whole suite.
# Everything installs from pyproject.toml into .venv; nothing is installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install run test lint format bench bench-fleet bench-sustained bench-tenancy bench-mlflow schemas fuzz clean chromium bench-ui chaos

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

test: lint chromium
	$(PY) -m pytest -p no:cacheprovider --durations=30  # the slowest tests: the suite must stay under 15 minutes

# The web UI's browser tests and benchmark drive Debian's chromium (Playwright never downloads
# a browser): installed here when missing, which needs root; RUNLEDGER_CHROMIUM names another binary.
chromium:
	@if [ -x /usr/bin/chromium ] || [ -n "$$RUNLEDGER_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	else \
		echo "chromium is missing: run 'sudo make chromium' (apt-get install chromium), or set RUNLEDGER_CHROMIUM" >&2; \
		exit 1; \
	fi

# schemathesis over every API operation, long (docs/testing.md): RUNLEDGER_FUZZ_EXAMPLES per operation
# and RUNLEDGER_FUZZ_SEED override the size and the seed; `make test` runs the same suite small.
fuzz: install
	RUNLEDGER_FUZZ_EXAMPLES=$${RUNLEDGER_FUZZ_EXAMPLES:-100} RUNLEDGER_FUZZ_CLI=1 \
		$(PY) -m pytest -p no:cacheprovider -o timeout=3600 tests/fuzz

# Crash consistency (bench/chaos.py): >= 1M points from 4 SDK processes while the projector,
# the analysis service and the API are SIGKILLed 24 times and the broker and PostgreSQL restart;
# exits 1 on any loss, duplicate or mismatch. RUNLEDGER_CHAOS_SEED picks the storm; `make test`
# runs a reduced trial (tests/e2e/test_chaos.py).
chaos: install
	$(PY) -m bench.chaos

bench: install
	$(PY) -m bench.run

bench-fleet: install
	$(PY) -m bench.fleet

# Sustained load: the fleet for 10 minutes at 10,000 points/s; memory of every part sampled
# every 5 s into bench/out/sustained_memory.csv (a .png too where matplotlib is installed),
# freshness p99 per minute, all in bench/out/sustained.json.
bench-sustained: install
	$(PY) -m bench.fleet --interval 10 --duration 600 --name sustained

bench-tenancy: install
	$(PY) -m bench.tenancy

bench-ui: install chromium
	$(PY) -m bench.ui_render

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
