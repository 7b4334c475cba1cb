# Quickstart: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create the virtual environment .venv (and install the project into it) when it is
# missing or older than pyproject.toml. Override the interpreter with PYTHON=python3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ldm-mini-installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the whole pipeline offline (shipped autoencoder and LDM, a short fresh
# training run, samples, a denoising animation, FD), written to runs/demo/index.html.
demo: $(STAMP)
	$(BIN)/ldm-mini demo --out runs/demo
	@echo "open runs/demo/index.html"

# The whole test suite: unit tests and every notebook (nbval, quick mode), on TEST_WORKERS
# processes of one thread each (pytest-xdist; each file or notebook stays on one worker).
TEST_WORKERS ?= 2
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=900
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(NBVAL)

lint: $(STAMP)
	$(BIN)/ruff check ldm_mini tests

clean:
	rm -rf runs .pytest_cache
