# The two commands of the README: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= feeds.yaml

.PHONY: install run poll demo test lint typecheck pytest bench clean

# The package and its runtime dependencies (reinstalled when pyproject.toml changes),
# byte-compiled once so that no command pays for it (pip does the same for installs).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	$(BIN)/python -m compileall -q aggregator
	touch $@

# Plus the test tools (pytest, hypothesis, ruff, mypy).
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed  ## just the virtual environment (.venv/bin/aggregator)

run: $(VENV)/.installed  ## run the aggregator on feeds.yaml
	$(BIN)/aggregator run -c $(CONFIG)

poll: $(VENV)/.installed  ## one pass over feeds.yaml, then exit
	$(BIN)/aggregator poll -c $(CONFIG)

demo: $(VENV)/.installed  ## the daemon over the bundled example feeds, no internet needed
	$(BIN)/aggregator demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check aggregator tests bench
	$(BIN)/ruff format --check aggregator tests bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy aggregator

pytest: $(VENV)/.installed-test
	$(BIN)/pytest

test: lint typecheck pytest  ## everything CI runs

# The side-by-side benchmark (by hand, about 40 minutes): writes bench/RESULTS.md. Its
# peers: lemon24/reader (from PyPI) and newsboat (Debian's, installed when missing).
$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	touch $@

bench: $(VENV)/.installed-bench
	command -v newsboat >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends newsboat; }
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
