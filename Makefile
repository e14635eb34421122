# The two README commands live here: `make demo` and `make test`.
# Every target creates .venv on first use (torch==2.13.0 first: a CPU build that pip finds on
# this kind of machine; an open torch range would pull a multi-GB CUDA build), then installs the
# project; later calls skip the install unless pyproject.toml changed.

PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
DEMO_DIR := runs/causal_seq/demo-$(shell date +%Y-%m-%d_%H-%M-%S)
PYTEST_WORKERS ?= 2

.PHONY: setup demo test test-slow lint bench bench-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# causal_seq small tier: 2 tasks x 2 architectures x 5 seeds, trained in two parallel lanes
# (one per core), then evaluated with frozen weights; prints the results table and plot paths.
demo: $(STAMP)
	@echo "causal_seq small tier -> $(DEMO_DIR)"
	OMP_NUM_THREADS=1 $(PYTHON) -m causal_seq.train -m experiment=small task=bandit \
		logging.progress=false hydra.sweep.dir=$(DEMO_DIR) & lane=$$!; \
	OMP_NUM_THREADS=1 $(PYTHON) -m causal_seq.train -m experiment=small task=grid \
		logging.progress=false hydra.sweep.dir=$(DEMO_DIR); status=$$?; \
	wait $$lane && test $$status -eq 0
	$(PYTHON) -m causal_seq.eval runs=$(DEMO_DIR)

test: $(STAMP)
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS)

test-slow: $(STAMP)
	$(PYTHON) -m pytest -q -m slow

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

bench: $(STAMP)
	$(PYTHON) -m bench.attention
	$(PYTHON) -m bench.moe
	$(PYTHON) -m bench.scan
	$(PYTHON) -m bench.causal_seq
	$(PYTHON) -m bench.gmom_ppo
	$(PYTHON) -m bench.s4rl

# every kernel benchmark on the CUDA device, one markdown report named by the GPU
bench-gpu: $(STAMP)
	$(PYTHON) -m bench.gpu_report

clean:
	rm -rf $(VENV) runs .pytest_cache
