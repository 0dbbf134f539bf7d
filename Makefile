# Two commands set up everything: `make demo` (the main job) and `make test` (the test suite).
# Both create the virtual environment in .venv on first use and reuse it afterwards.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out/demo

# Datasets are read from $MIVAE_DATA_DIR, else from a data folder beside the checkout if one is
# there (one subfolder per dataset), else from the user cache (downloaded on first use).
ifndef MIVAE_DATA_DIR
ifneq ($(wildcard ../shared/data/mnist/t10k-labels-idx1-ubyte.gz),)
export MIVAE_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mivae needs Python 3.11 or newer; set PYTHON=python3.11 or newer.")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build. An unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/mivae reproduce --preset smoke --out $(OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# ruff's lint and format check over all the code; mypy over the public API (the estimators, configs, models, training)
TYPED := src/mivae/__init__.py src/mivae/estimators.py src/mivae/errors.py src/mivae/config.py src/mivae/hardware.py \
         src/mivae/images/results.py \
         src/mivae/training.py src/mivae/models src/mivae/tables
lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy $(TYPED)

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out
