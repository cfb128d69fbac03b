# Two commands for a fresh machine:  `make demo` (the main job)  and  `make test` (the whole suite).
# Each creates ./.venv with a CPU build of PyTorch and fedrecon installed in editable mode.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DATA_DIR ?= $(abspath ../shared/data)
BIN := $(VENV)/bin

.PHONY: venv demo test lint stubs clean encoder encoder-v2 encoder-proxy encoder-third

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

# Reproduces the shipped client/weights/omniglot.pt (client/weights/README.md): omniglot-v2, the proxy-then-
# episodic Conv4 and a third Conv4 side by side. Every training is resumable: run it again after a stop.
ENCODER_OUT ?= runs/encoder
encoder: encoder-v2 encoder-proxy encoder-third
	$(BIN)/fedrecon encoder combine $(ENCODER_OUT)/omniglot-v2.pt $(PROXY_OUT)/episodic.pt $(THIRD_OUT)/third.pt \
		--out $(ENCODER_OUT)/omniglot.pt

# Reproduces client/weights/omniglot-v2.pt: the first 7,800 steps of a 20,000-step cosine schedule, then its
# step-7800 weights annealed over 2,000 steps.
DEVICE ?= auto
PRETRAIN = $(BIN)/fedrecon pretrain --dataset omniglot --data-dir $(DATA_DIR)/omniglot --val-alphabets 5 \
	--method proto --ways 100 --shots 1 --queries 5 --augment --val-every 500 --val-episodes 1000 \
	--save-every 50 --keep best --device $(DEVICE) --resume
encoder-v2: venv
	$(PRETRAIN) --out $(ENCODER_OUT)/long.pt --episodes 20000 --stop-after 7800 --lr 1e-3 --seed 0
	$(PRETRAIN) --out $(ENCODER_OUT)/omniglot-v2.pt --init $(ENCODER_OUT)/long.last.pt --episodes 2000 --lr 6.7e-4 --seed 1

# The second member of omniglot: supervised proxy pretraining (5,000 steps), then 15,000 episodic 100-way steps
# from it, the same 20,000-step budget (docs/experiments.md, "Proxy, then episodic, at full length"). Resumable.
PROXY_OUT ?= runs/encoder-proxy
HIDDEN ?= 64# channels per Conv4 block; the wider arm of #26: make encoder-proxy HIDDEN=128 PROXY_OUT=runs/encoder-wide
PROXY_COMMON = $(BIN)/fedrecon pretrain --dataset omniglot --data-dir $(DATA_DIR)/omniglot --val-alphabets 5 \
	--val-every 500 --val-episodes 1000 --save-every 50 --keep best --augment --device $(DEVICE) --resume \
	--hidden $(HIDDEN)
encoder-proxy: venv
	$(PROXY_COMMON) --out $(PROXY_OUT)/proxy.pt --method proxy --batch-size 600 --episodes 5000 --lr 1e-3 --seed 0
	$(PROXY_COMMON) --out $(PROXY_OUT)/episodic.pt --init $(PROXY_OUT)/proxy.last.pt --method proto --ways 100 \
		--shots 1 --queries 5 --episodes 15000 --lr 1e-3 --seed 1

# The third member of omniglot: 100-way episodes from random weights, 5,000 steps, seed 2 (docs/experiments.md,
# "A third member").
THIRD_OUT ?= runs/encoder-third
encoder-third: venv
	$(PRETRAIN) --out $(THIRD_OUT)/third.pt --episodes 5000 --lr 1e-3 --seed 2

stubs: venv
	$(BIN)/python -m fedrecon.proto.generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache runs
