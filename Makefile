# The two commands of the README: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= feeds.yaml

.PHONY: run poll test lint typecheck pytest clean

# The package and its runtime dependencies (reinstalled when pyproject.toml changes).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

# Plus the test tools (pytest, hypothesis, ruff, mypy).
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

run: $(VENV)/.installed  ## run the aggregator on feeds.yaml
	$(BIN)/aggregator run -c $(CONFIG)

poll: $(VENV)/.installed  ## one pass over feeds.yaml, then exit
	$(BIN)/aggregator poll -c $(CONFIG)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check aggregator tests
	$(BIN)/ruff format --check aggregator tests

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy aggregator

pytest: $(VENV)/.installed-test
	$(BIN)/pytest

test: lint typecheck pytest  ## everything CI runs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
