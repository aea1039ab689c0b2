# Every target creates .venv and installs what it needs by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench proto clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Predator-prey on the embedded mesh: progress bar, summary, CSV/JSON and a PNG plot.
demo: $(STAMP)
	$(BIN)/python examples/predator_prey.py --out sim-results

lint: $(STAMP)
	$(BIN)/ruff check agentmesh tests examples benchmarks
	$(BIN)/ruff format --check agentmesh tests examples benchmarks
	$(BIN)/mypy --strict agentmesh benchmarks

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint pytest

# Regenerate the wire code from protos/ (checked in; tests/test_proto.py checks it).
proto: $(STAMP)
	$(BIN)/python -m agentmesh._private.protogen

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
