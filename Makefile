# embed_lm: `make help` lists the targets. Everything runs in .venv (created on first use).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help install demo test test-fast train-tiny passkey sweep-table4 table4-report bench gpu-check clean
PROFILE ?= paper
SWEEP_DIR ?= sweeps/table4/$(PROFILE)
ROWS_paper := glob(*,exclude=tiny_default)# tiny_default: the CPU profile's reference for its tiny llama2 row
ROWS_cpu := glob(*,exclude=mean_pool)# the CPU profile's default pools MiniLM by mean already
SEEDS_paper := 42# one seed per 7B row (SEEDS=1,2,3 for error bars)
SEEDS_cpu := 1,2,3
SEEDS ?= $(SEEDS_$(PROFILE))
# the untrained base model as its authors use it, on the profile's suite: the report's "base" row
BASE_paper := backbone=mistral pooling=last_token instruction_style=natural eval=mteb_en
BASE_cpu := backbone=minilm pooling=mean instruction_style=none eval=local max_length=64 \
	'eval.tasks=[DebianSummaryRetrieval,DebianSectionClustering]'
PASSKEY_VARIANTS := window4k_base1e4,window32k_base1e4,window32k_base1e5,window32k_base1e6

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -c constraints.txt -e '.[test,deepspeed]'
	touch $@

install: $(BIN)/.installed ## create .venv and install embed_lm + DeepSpeed (torch pinned to the CPU 2.13.0 build)

demo: install ## LoRA-tune all-MiniLM-L6-v2 on the bundled sample (CPU, offline); held-out retrieval before/after
	$(BIN)/python -m embed_lm.train experiment=demo

test: install ## run the test suite (CPU, offline; what CI runs)
	$(BIN)/python -m pytest -q

test-fast: install ## the quick inner loop: unit tests only, no training runs (tests/conftest.py: FAST_MODULES)
	$(BIN)/python -m pytest -q -m "not slow"

train-tiny: install ## a few steps on the tiny random-init Mistral (smoke run)
	$(BIN)/python -m embed_lm.train backbone=tiny_mistral data=sample debug=smoke

passkey: install ## passkey retrieval (paper Fig. 5): the 4 variants as one multirun + one plot; ARGS="run=<run dir>"
	$(BIN)/python -m embed_lm.passkey -m passkey_variant=$(PASSKEY_VARIANTS) $(ARGS)

sweep-table4: install ## the paper's Table 4 (rows x SEEDS) as one multirun + base model + report; PROFILE=paper | cpu
	$(BIN)/python -m embed_lm.train -m 'ablation=$(ROWS_$(PROFILE))' seed=$(SEEDS) experiment=table4_$(PROFILE) \
		hydra.sweep.dir=$(SWEEP_DIR) $(ARGS); status=$$?; \
	$(BIN)/python -m embed_lm.evaluate run=null $(BASE_$(PROFILE)) output_dir=$(SWEEP_DIR)/base wandb.enabled=false \
		&& $(BIN)/python -m embed_lm.report table4 $(SWEEP_DIR) && exit $$status

table4-report: install ## rebuild table4.md/.csv/.png from the finished rows in SWEEP_DIR (PROFILE=... picks it)
	$(BIN)/python -m embed_lm.report table4 $(SWEEP_DIR)

bench: install ## benchmarks (print figures, assert nothing): encode vs sentence-transformers, training throughput
	$(BIN)/python benchmarks/encode_throughput.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/passkey_throughput.py

gpu-check: install ## one GPU (or all visible): 7B shapes, LoRA r16, 512 tokens vs the planner -> gpu_check.json; ARGS="--model <dir>"
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean: ## remove run outputs (keeps .venv)
	rm -rf outputs .pytest_cache
