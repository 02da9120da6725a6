# Two entry points (README quickstart): `make demo` and `make test`. Both set up .venv first.
# On a CUDA machine pick the torch build you want, e.g.: make demo TORCH=torch
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]" "$(TORCH)"  # torch named again: no dependency may swap the build for another
	touch $@

.PHONY: setup bytecode demo lint test test-fast
setup: $(VENV)/.installed

# The editable install leaves segbatch's bytecode to its first import, which PYTHONDONTWRITEBYTECODE (set in some CI images)
# forbids to write: then every process, each Ray worker among them, compiles the package again (and the test modules whose
# worker classes Ray workers import). Compile both once.
bytecode: $(VENV)/.installed
	$(BIN)/python -m compileall -q segbatch tests

demo: bytecode
	mkdir -p demo-out
	$(BIN)/segbatch demo video --out demo-out/street.mp4 --frames 48 --size 240x320 --overwrite
	$(BIN)/segbatch run --input demo-out/street.mp4 --out demo-out/street.zarr --overwrite
	$(BIN)/segbatch info demo-out/street.zarr
	$(BIN)/segbatch export demo-out/street.zarr --to demo-out/overlay.mp4 --overwrite

lint: $(VENV)/.installed
	$(BIN)/ruff check segbatch tests benchmarks
	$(BIN)/ruff format --check segbatch tests benchmarks
	$(BIN)/mypy segbatch

test: lint bytecode
	$(BIN)/python -m pytest

test-fast: lint bytecode  # without the end-to-end Ray tests (marked slow): units, contracts, parsers, messages
	$(BIN)/python -m pytest -m "not slow"
