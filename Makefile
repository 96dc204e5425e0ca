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

.PHONY: install main train eval test test-fast test-latest constraints lint bench bench-encode bench-eval bench-train bench-memory bench-matryoshka clean \
	scifact bench-retrieval

install: $(VENV)/.installed

# torch first and pinned: the CPU wheel, so the range in pyproject.toml never pulls a multi-GB CUDA build.
# constraints.txt: the exact versions CI last ran the suite on, so a fresh machine installs what was tested
# (pyproject.toml keeps the honest ranges; `make test-latest` meets new releases on purpose).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
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

# The newest releases pyproject.toml allows, in a venv of their own (never CI's default path): run it before
# moving constraints.txt forward, or when a dependency ships a release. Green -> `make constraints` writes its
# versions into constraints.txt; red -> fix the code, or bound the range in pyproject.toml with the reason.
LATEST_VENV ?= .venv-latest
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(LATEST_VENV)/bin/pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/python -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in \
		('sentence-transformers', 'transformers', 'accelerate', 'datasets', 'peft', 'huggingface_hub', 'deepspeed')))"
	$(LATEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

constraints:
	test -x $(LATEST_VENV)/bin/pip || { echo "run make test-latest first: constraints come from its venv"; exit 2; }
	{ echo "# Versions the suite passed on (make test-latest, then make constraints); used by make install."; \
	  $(LATEST_VENV)/bin/pip freeze --exclude-editable --disable-pip-version-check | sed 's/+cpu$$//'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

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

# Retrieval end to end on BEIR SciFact: carve a dev split from train -> mine hard negatives on train, train,
# keep the best dev nDCG@10 -> evaluate on test (the recipe's final eval; MTEB's definitions). See
# recipes/scifact-hardneg.yaml for the settings. Any BEIR folder with train qrels: make scifact BEIR=path/to/folder
BEIR ?= $(NLPC_DATA_DIR)/scifact
BEIR_NAME = $(notdir $(patsubst %/,%,$(BEIR)))
scifact: install
	$(BIN)/nlp-contrastive beir-split --data $(BEIR) --output outputs/$(BEIR_NAME)-split --overwrite
	$(BIN)/nlp-contrastive train recipes/scifact-hardneg.yaml --vars.dataset outputs/$(BEIR_NAME)-split \
		--vars.output outputs/$(BEIR_NAME)-hardneg --overwrite_output_dir true

bench-retrieval: install
	$(BIN)/python benchmarks/bench_retrieval.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) outputs .pytest_cache

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
