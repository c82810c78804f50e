# Set-up and everyday commands. `make serve` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of PyTorch, installed before the project so that sentence-transformers does not
# pull a multi-GB CUDA build. Elsewhere, for example:
#   make TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
# Extra options for `make serve`, for example: make serve ARGS="--port 8010 --config my.yaml"
ARGS ?=

.PHONY: install serve test lint

$(BIN)/adapter-router: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/adapter-router

serve: install
	$(BIN)/adapter-router serve $(ARGS)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
