# tidal: two commands do all the set-up on a fresh machine.
#   make demo   - the fraud-detection demo end to end on the embedded broker
#   make test   - install with test dependencies and run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tidal-installed

.PHONY: install demo test bench clean system-deps test-cluster

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tidal demo fraud

# Real servers the tests drive: Prometheus (scrapes a worker), Chromium (renders the dashboard),
# PostgreSQL and Mosquitto (the connectors' outside systems; tests start them on loopback).
# Installed with apt when missing and we are root; otherwise those tests skip and say why.
PG_BIN = $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) $(shell command -v initdb))
system-deps:
	@if command -v prometheus >/dev/null && command -v chromium >/dev/null && command -v mosquitto >/dev/null \
		&& [ -n "$(PG_BIN)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium \
			postgresql mosquitto >/dev/null; \
	else echo "note: prometheus/chromium/postgresql/mosquitto missing and not root: their tests will be skipped"; fi

# The suite in TEST_WORKERS pytest-xdist processes, each with its own embedded broker and
# TIDAL_HOME (most of a test's time is waiting on the broker, so 3 pay on 2 cores); 1: serially.
TEST_WORKERS ?= 3
test: $(STAMP) system-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

# Benchmark suite (bench/README.md): its extra packages (Quix Streams, Faust, matplotlib, ...)
# go into the venv here, never into tidal's dependencies; `make test` does not need them.
BENCH_STAMP := $(VENV)/.bench-installed
.PHONY: bench-quick
$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/tidal bench

bench-quick: $(BENCH_STAMP)
	$(BIN)/tidal bench --quick

clean:
	rm -rf $(VENV) .tidal build dist src/*.egg-info

# The integration tests against a Kafka cluster someone else runs (Apache Kafka, Redpanda, ...),
# instead of the embedded broker: make test-cluster BOOTSTRAP=host:port
# Tests of the embedded broker itself (marked embedded_only) are skipped. PYTEST_ARGS narrows it.
ifneq ($(filter test-cluster,$(MAKECMDGOALS)),)
ifeq ($(strip $(BOOTSTRAP)),)
$(error usage: make test-cluster BOOTSTRAP=host:port [PYTEST_ARGS=...])
endif
endif
test-cluster: $(STAMP)
	TIDAL_TEST_BOOTSTRAP=$(BOOTSTRAP) $(BIN)/python -m pytest -m integration $(or $(PYTEST_ARGS),tests/integration)
