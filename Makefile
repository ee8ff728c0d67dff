# Two commands for a fresh clone: `make run` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test faults fuzz browser lint format bench clean help

help:
	@echo "make run    start the whole stack (gateway on http://127.0.0.1:8080)"
	@echo "make test   run the test suite"
	@echo "make fuzz   schemathesis, longer, on SQLite and PostgreSQL"
	@echo "make lint   ruff check + format check"
	@echo "make bench  run the benchmarks under bench/"
	@echo "make faults the fault suite's long form (FAULTS_SIZE, FAULTS_CHANGES, FAULTS_ARGS)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m dev.run

test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The fault suite's long form: about 1,000 changes per fault, every fault, both databases;
# prints the table. FAULTS_SIZE=short|long, FAULTS_CHANGES=N, FAULTS_ARGS="--backend sqlite".
faults: $(STAMP)
	$(PY) -m tests.faults $(FAULTS_ARGS)

# The schemathesis run of `make test` (tests/test_schemathesis.py), with more examples per
# operation, new ones each run, on both databases; FUZZ_EXAMPLES and FUZZ_BACKENDS may be
# overridden.
FUZZ_EXAMPLES ?= 300
FUZZ_BACKENDS ?= sqlite,postgres
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_BACKENDS=$(FUZZ_BACKENDS) FUZZ_RANDOM=1 FUZZ_TIMEOUT=3600 \
		$(PY) -m pytest tests/test_schemathesis.py $(PYTEST_ARGS)

# Headless Chromium for tests/e2e/test_demo_page.py: installed with apt when running as root.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || true

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	@command -v wrk >/dev/null || apt-get install -y wrk
	$(PY) -m bench.auth_bench sqlite
	$(PY) -m bench.auth_bench postgres
	$(PY) -m bench.rest_bench sqlite
	$(PY) -m bench.rest_bench postgres
	$(PY) -m bench.lag_bench sqlite
	$(PY) -m bench.lag_bench postgres
	$(PY) -m bench.consistency_bench sqlite
	$(PY) -m bench.consistency_bench postgres
	$(PY) -m bench.live_bench all
	$(PY) -m bench.health_bench sqlite

clean:
	rm -rf var .pytest_cache
