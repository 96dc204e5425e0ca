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

.PHONY: install main train eval test test-fast lint bench bench-encode bench-eval bench-train bench-memory bench-matryoshka clean \
	scifact bench-retrieval

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

bench: bench-encode bench-eval bench-train bench-memory bench-matryoshka

bench-encode: install
	$(BIN)/python benchmarks/bench_encode.py

bench-eval: install
	$(BIN)/python benchmarks/bench_eval.py --suite sts,scifact

bench-train: install
	$(BIN)/python benchmarks/bench_train.py

bench-memory: install
	$(BIN)/python benchmarks/bench_memory.py

bench-matryoshka: install
	$(BIN)/python benchmarks/bench_matryoshka.py

# Retrieval end to end on BEIR SciFact: mine hard negatives on train -> train -> evaluate on SciFact test
# (the recipe's final eval; MTEB's definitions). See recipes/scifact-hardneg.yaml for the settings.
scifact: install
	$(BIN)/nlp-contrastive mine --data $(NLPC_DATA_DIR)/scifact --split train --output outputs/scifact-mined/train.jsonl \
		--num-negatives 1 --range-max 30 --relative-margin 0.05 --sampling top --overwrite
	$(BIN)/nlp-contrastive train recipes/scifact-hardneg.yaml --overwrite_output_dir true

bench-retrieval: install
	$(BIN)/python benchmarks/bench_retrieval.py

clean:
	rm -rf $(VENV) outputs .pytest_cache

# The lower bounds of pyproject.toml for transformers and accelerate, laid over the dev venv (--no-deps, first on
# PYTHONPATH), then the trainer's fast tests. Change MIN_VERSIONS together with pyproject.toml.
MIN_VERSIONS ?= transformers==5.19.0 accelerate==1.3.0
MIN_VERSION_TESTS ?= tests/test_trainer.py
.PHONY: test-min-versions
test-min-versions: install
	rm -rf $(VENV)/min-versions
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --target $(VENV)/min-versions $(MIN_VERSIONS)
	PYTHONPATH=$(abspath $(VENV))/min-versions:$(CURDIR) $(BIN)/python -c "import transformers, accelerate; print('transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
	PYTHONPATH=$(abspath $(VENV))/min-versions:$(CURDIR) $(BIN)/python -m pytest -q -m "not slow" $(MIN_VERSION_TESTS)
