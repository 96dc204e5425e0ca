# Every target installs what it needs into $(VENV) first. Data: $(NLPC_DATA_DIR) (default ../shared/data).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NLPC_DATA_DIR ?= $(abspath ../shared/data)
RECIPE ?= recipes/stsb-cosine.yaml
OUTPUT ?= outputs/stsb-cosine
export NLPC_DATA_DIR
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install main train eval test test-fast lint bench bench-encode bench-eval bench-train bench-memory clean

install: $(VENV)/.installed

# torch first and pinned: the CPU wheel, so the range in pyproject.toml never pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

main: train                    ## train the default recipe on the default model, then evaluate (table printed)

train: install
	$(BIN)/nlp-contrastive train $(RECIPE) --output_dir $(OUTPUT) --overwrite_output_dir true

eval: install
	$(BIN)/nlp-contrastive eval --model $(OUTPUT) --suite eval/sts.yaml

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check nlp_contrastive tests eval benchmarks examples

bench: bench-encode bench-eval bench-train bench-memory

bench-encode: install
	$(BIN)/python benchmarks/bench_encode.py

bench-eval: install
	$(BIN)/python benchmarks/bench_eval.py --suite sts,scifact

bench-train: install
	$(BIN)/python benchmarks/bench_train.py

bench-memory: install
	$(BIN)/python benchmarks/bench_memory.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
