# The README's two commands: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup clean

$(BIN)/medtrans: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# pinned CPU build (a bare `torch` would pull a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,dose]'
	touch $(BIN)/medtrans

setup: $(BIN)/medtrans

demo: setup
	$(BIN)/medtrans demo --out medtrans_demo

test: setup
	$(BIN)/ruff check medtrans data_prep evaluation tests benchmarks docs
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) medtrans_demo .pytest_cache
