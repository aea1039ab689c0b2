# Every target creates .venv and installs what it needs by itself, from the locks in
# requirements/ (every version pinned, hashes checked): `make demo` the runtime
# dependencies only, the other targets the dev extra. Editing a lock reinstalls.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet
DEMO := $(VENV)/.demo-installed
DEV := $(VENV)/.dev-installed

.PHONY: demo test lint typecheck pytest bench proto lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# $(DEMO) from requirements/demo.txt, $(DEV) from requirements/dev.txt (the same pins and
# more, so a venv made by `make demo` is completed by `make test`). Then agentmesh itself,
# editable, built by the locked setuptools.
$(VENV)/.%-installed: requirements/%.txt pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes -r $<
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

# Predator-prey on the embedded mesh: progress bar, summary, CSV/JSON and a plot (the
# built-in PNG, as the runtime lock has no matplotlib; a titled PNG and SVG with it).
demo: $(DEMO)
	$(BIN)/python examples/predator_prey.py --out sim-results

lint: $(DEV)
	$(BIN)/ruff check agentmesh tests examples benchmarks
	$(BIN)/ruff format --check agentmesh tests examples benchmarks
	$(BIN)/mypy --strict agentmesh benchmarks

# pytest's exit 5 (no test collected) fails too, saying so: this suite is never empty.
# Bytecode is compiled first (only what changed): where PYTHONDONTWRITEBYTECODE is set,
# every node process the tests start would compile agentmesh again (a third of the CPU
# of a multi-process test file).
pytest: $(DEV)
	$(BIN)/python -m compileall -q agentmesh tests
	$(BIN)/python -m pytest -q || { status=$$?; \
	  if [ $$status -eq 5 ]; then echo "pytest collected no test" >&2; fi; exit $$status; }

test: lint pytest

# Regenerate the wire code from protos/ (checked in; tests/test_proto.py checks it).
proto: $(DEV)
	$(BIN)/python -m agentmesh._private.protogen

bench: $(DEV)
	$(BIN)/python -m benchmarks

# Regenerate requirements/*.txt after editing pyproject.toml or requirements/build.in
# (needs the network; see requirements/README.md). LOCK_FLAGS=--upgrade moves every pin.
lock:
	PY=$(PY) LOCK_FLAGS='$(LOCK_FLAGS)' bash requirements/lock.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
