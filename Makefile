# Two commands on a fresh machine with python3 and make:
#   make run    create .venv, install, start the hub on the embedded default (SQLite, web chat on 127.0.0.1:8080)
#   make test   create .venv, install with the test tools, run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/hub run

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check hub tests bench
	$(BIN)/mypy
	$(BIN)/mypy --strict hub/channels/base.py hub/channels/parts.py hub/routing/context.py
	$(BIN)/python -m hub.i18n.catalogs check
