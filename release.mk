# release.mk: `make release` as file targets, included from the Makefile.
#
# Each stage is one `edgeft release ... stage NAME` call (edgeft/release/pipeline.py) whose prerequisites are the
# files it reads, so a second `make release` does nothing and touching the training data reruns from training on.
# Every stage writes its outputs under a temporary name and renames them when complete, so after a SIGKILL make
# sees the stage as not done and runs it again (training resumes from its last checkpoint).
#
#   make release                                    the built-in demo -> release/edgeft-demo/
#   make release BASE=path/to/hf DATA=t.jsonl EVAL=e.jsonl [QUANT=Q5_K_M] [NAME=x] [RECIPE=r.yaml] [OUT=out]
#
# NAME and QUANT given to make win over the recipe's `name:` / `quant:` (make needs the file names up front).

PY         ?= .venv/bin/python
OUT        ?= out
QUANT      ?= Q4_K_M
RELEASE_DIR ?= release
EDGEFT_RUN ?= $(PY) -m edgeft
DEMO_DIR   := .cache/demo

ifeq ($(strip $(BASE)),)
  # The demo: its base and data are themselves targets, built from the generator sources.
  R_BASE       := $(DEMO_DIR)/base
  R_BASE_FILES := $(DEMO_DIR)/base/source.json
  R_DATA       := $(or $(DATA),$(DEMO_DIR)/data/train.jsonl)
  R_EVAL       := $(or $(EVAL),$(DEMO_DIR)/data/eval.jsonl)
  R_NAME       := $(or $(NAME),edgeft-demo)
  R_RECIPE     := $(or $(RECIPE),edgeft/demo/recipe.yaml)
else
  R_BASE       := $(patsubst %/,%,$(BASE))
  R_BASE_FILES := $(wildcard $(R_BASE)/*.json $(R_BASE)/*.safetensors $(R_BASE)/tokenizer.model $(R_BASE)/*.jinja)
  R_DATA       := $(DATA)
  R_EVAL       := $(EVAL)
  R_NAME       := $(or $(NAME),$(notdir $(R_BASE)))
  R_RECIPE     := $(RECIPE)
endif

W        := $(OUT)/$(R_NAME)
R_MODEL  := $(W)/model-$(QUANT).gguf
R_BASEQ  := $(W)/base-$(QUANT).gguf
R_REPORT := $(W)/eval/report.json
R_LORA   := $(if $(wildcard convert/lora.py),$(W)/adapter.gguf)
R_PUBLISHED := $(RELEASE_DIR)/$(R_NAME)/manifest.json
STAGE    = $(EDGEFT_RUN) release --base $(R_BASE) --data $(R_DATA) --eval $(R_EVAL) --quant $(QUANT) \
           --name $(R_NAME) --out $(OUT) --release-dir $(RELEASE_DIR) $(if $(R_RECIPE),--recipe $(R_RECIPE)) stage

.PHONY: release release-check FORCE
.DELETE_ON_ERROR:

release: $(R_PUBLISHED) ## data check -> train -> merge -> convert/quantize -> eval -> bench -> release/NAME/ (no BASE: the demo)

release-check: $(R_PUBLISHED) ## re-hash the published release against its manifest.json
	$(EDGEFT_RUN) release verify $(RELEASE_DIR)/$(R_NAME)

ifeq ($(strip $(BASE)),)
$(DEMO_DIR)/data/train.jsonl $(DEMO_DIR)/data/eval.jsonl $(DEMO_DIR)/data/shop.sqlite &: \
		edgeft/demo/sql_task.py edgeft/demo/vocabulary.py edgeft/demo/schema.sql edgeft/demo/base_lm.py | $(STAMP)
	$(EDGEFT_RUN) demo data -o $(DEMO_DIR)/data

# Always asked, re-imported only when the packaged GGUF or the importer changed (the file is untouched on a
# cache hit): about a minute, once.
$(DEMO_DIR)/base/source.json: FORCE | $(STAMP)
	@$(EDGEFT_RUN) demo base -o $(DEMO_DIR)/base
endif

# The stage rules below must match the stage table in edgeft/release/pipeline.py (tests/test_release_mk.py checks).
# Rewritten only when a setting changes (BASE, QUANT, recipe...), so a changed setting reruns every stage.
$(W)/settings.json: FORCE | $(STAMP)
	@$(STAGE) settings

$(W)/data-check.json: $(W)/settings.json $(R_DATA) $(R_EVAL)
	$(STAGE) check

$(W)/adapter/adapter_config.json: $(W)/data-check.json $(R_DATA) $(R_EVAL) $(R_BASE_FILES)
	$(STAGE) train

$(W)/merged/config.json: $(W)/adapter/adapter_config.json
	$(STAGE) merge

$(W)/imatrix.gguf: $(W)/merged/config.json $(R_DATA)
	$(STAGE) imatrix

$(W)/model-F16.gguf: $(W)/merged/config.json
	$(STAGE) f16

$(R_MODEL): $(W)/merged/config.json $(W)/imatrix.gguf
	$(STAGE) model

$(W)/base-imatrix.gguf: $(W)/settings.json $(R_BASE_FILES) $(R_DATA)
	$(STAGE) base_imatrix

$(R_BASEQ): $(W)/base-imatrix.gguf $(R_BASE_FILES)
	$(STAGE) base_gguf

$(W)/adapter.gguf: $(W)/adapter/adapter_config.json
	$(STAGE) lora

# Inputs only the recipe names (eval.context) come from recipe-inputs.mk, which the settings stage writes.
-include $(W)/recipe-inputs.mk
$(R_REPORT): $(R_MODEL) $(R_BASEQ) $(W)/model-F16.gguf $(R_EVAL) $(R_DATA)
	$(STAGE) eval

$(W)/bench.json: $(R_MODEL) $(R_BASEQ)
	$(STAGE) bench

# Fails (non-zero, naming the gate) and publishes nothing when a gate failed; the report stays in $(W)/eval.
$(R_PUBLISHED): $(R_REPORT) $(W)/bench.json $(R_MODEL) $(R_LORA)
	$(STAGE) publish
