# tidal: two commands do all the set-up on a fresh machine.
#   make demo   - the fraud-detection demo end to end on the embedded broker
#   make test   - install with test dependencies and run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tidal-installed

.PHONY: install demo test bench clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tidal demo fraud

# Real servers the tests drive: Prometheus (scrapes a worker) and Chromium (renders the dashboard).
# Installed with apt when missing and we are root; otherwise those tests skip and say why.
system-deps:
	@if command -v prometheus >/dev/null && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium >/dev/null; \
	else echo "note: prometheus/chromium missing and not root: their tests will be skipped"; fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/score_throughput.py

clean:
	rm -rf $(VENV) .tidal build dist src/*.egg-info
