# Two commands for a fresh machine:  `make demo` (the main job)  and  `make test` (the whole suite).
# Each creates ./.venv with a CPU build of PyTorch and fedrecon installed in editable mode.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DATA_DIR ?= $(abspath ../shared/data)
BIN := $(VENV)/bin

.PHONY: venv demo test lint stubs clean

$(BIN)/fedrecon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/fedrecon

demo: venv
	$(BIN)/fedrecon demo --out runs/demo

test: venv
	FEDRECON_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q
	$(BIN)/python .ci/lint_imports.py
	$(BIN)/ruff check .

lint: venv
	$(BIN)/python .ci/lint_imports.py
	$(BIN)/ruff check .

stubs: venv
	$(BIN)/python -m fedrecon.proto.generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache runs
