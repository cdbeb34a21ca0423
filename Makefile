# Papers in Miniature. Two commands do all the set-up on a fresh machine: `make book` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test unit browser bench lab clean

# The venv is (re)installed whenever a requirements file or pyproject.toml changes.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

## book: execute every changed chapter (both cores), write the scoreboard, render the HTML into _build/html
book: $(STAMP)
	$(BIN)/python -m lib.book.build
	$(BIN)/jupyter-book build -W -n --keep-going .

## test: unit tests, the full book build, then the browser tests against the built pages
test: unit book browser

unit: $(STAMP)
	$(BIN)/ruff check lib tests scripts
	$(BIN)/pytest -m "not browser"

browser: $(STAMP)
	$(BIN)/pytest -m browser tests/browser

## bench: per-chapter execution seconds, cold and warm build time, page weight, slider response time
bench: $(STAMP)
	$(BIN)/python scripts/bench.py

## lab: open the chapters live in JupyterLab (MyST .md files open as notebooks through jupytext)
lab: $(STAMP)
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter_config $(BIN)/jupyter lab

clean:
	rm -rf _build scoreboard.md
