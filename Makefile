# proteinperf — two commands on a fresh machine: `make train` and `make test`.
# Both (re)build .venv when it is missing or pyproject.toml changed.
#
# TORCH is handed to pip verbatim. The default is the CPU wheel this project's CI uses;
# on a GPU machine pick the CUDA build, e.g.
#   make train TORCH="torch==2.13.0 --index-url <the PyTorch CUDA wheel index for your driver>"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev,bench,hf
DATASET ?= sample
BIN := $(VENV)/bin
STAMP := $(VENV)/.proteinperf-installed
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install train test lint bench data clean reproduce wheel gpu-check notebooks

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  Hydra overrides pass through: make train model=performer_causal trainer.max_steps=200"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP) ## create/refresh .venv with the package (editable) and its dev/bench/hf extras

# Hydra overrides: `make train model=tiny trainer.max_steps=200` reaches make as variable
# definitions (MAKEOVERRIDES, newest first, hence the reverse); `make train -- -m ...` brings
# flags as goals. Both are handed to the Hydra entry point in the order typed.
reverse = $(if $(1),$(call reverse,$(wordlist 2,$(words $(1)),$(1))) $(firstword $(1)))
MAKE_VARS := PYTHON=% VENV=% TORCH=% EXTRAS=% DATASET=% ARGS=% PYTEST_ARGS=% BUDGET=% CORPUS=% FAR=% WHEELS=%
HYDRA_OVERRIDES := $(call reverse,$(filter-out $(MAKE_VARS),$(MAKEOVERRIDES)))
TRAIN_ARGS := $(filter-out train,$(MAKECMDGOALS)) $(HYDRA_OVERRIDES)
train: $(STAMP) ## train a small bidirectional Performer on 20k Swiss-Prot proteins, clustered split (Hydra overrides allowed)
	$(BIN)/python -m proteinperf.train $(TRAIN_ARGS) $(ARGS)

test: $(STAMP) ## run the whole test suite (what CI runs)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: $(STAMP) ## the inner loop: every test not marked slow (a few minutes)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check proteinperf tests
	$(BIN)/ruff format --check proteinperf tests

bench: $(STAMP) ## run every benchmark; tables printed, JSON + PNG in benchmarks/results/
	$(BIN)/python -m proteinperf.benchmarks $(ARGS)

notebooks: $(STAMP) ## re-execute notebooks/*.ipynb in place with the shipped models (a few minutes each)
	$(BIN)/python notebooks/execute.py $(ARGS)

data: $(STAMP) ## download (unless DATASET=sample) and prepare a corpus: make data DATASET=uniref50
	$(BIN)/python -m proteinperf.cli data $(DATASET) $(ARGS)

# make reproduce BUDGET=5 CORPUS=<corpus dir or FASTA> [FAR=<fasta>] [ARGS="--preset gpu"]
BUDGET ?= 5
CORPUS ?=
FAR ?=
reproduce: $(STAMP) ## the paper's Table 2 + BLOSUM62 figure: 5 models x BUDGET minutes, results in benchmarks/results/
	$(BIN)/python -m proteinperf.reproduce --budget $(BUDGET) $(if $(CORPUS),--corpus $(CORPUS)) $(if $(FAR),--far $(FAR)) $(ARGS) $(foreach w,$(HYDRA_OVERRIDES),$(if $(findstring =,$(w)),$(w)))

# make gpu-check [CORPUS=<FASTA or corpus dir>] [WHEELS=<folder of .whl>] [ARGS="--budget-s 480"]
# Runs with whatever torch the machine has: .venv's python if there is one, else python3; it
# installs nothing unless WHEELS names a folder of wheels (offline: pip --no-index).
GPU_PYTHON = $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
WHEELS ?=
gpu-check: ## one GPU, <= 8 min: kernels vs float64, FAVOR+ vs SDPA, paper-size throughput (results in benchmarks/results/)
	$(if $(WHEELS),$(GPU_PYTHON) -m pip install --no-index --find-links $(WHEELS) $(WHEELS)/*.whl)
	$(GPU_PYTHON) -m proteinperf.benchmarks.gpu_check $(if $(CORPUS),--corpus $(CORPUS)) $(ARGS)

wheel: $(STAMP) ## build dist/proteinperf-*.whl (conf/ and the default corpus inside): pip install it anywhere
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation --quiet -w dist .
	rm -rf build

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache outputs multirun .cache build dist

# With `make train -- -m ...`, Hydra flags arrive as goals: swallow them there only, so a
# typo such as `make tset` still fails loudly.
ifneq ($(filter train,$(MAKECMDGOALS)),)
%:
	@:
endif
