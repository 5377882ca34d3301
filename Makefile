# One-command set-up. `make quickstart` and `make test` work on a fresh machine: they create .venv
# (unless a virtual environment is already active), install what they need, then run.
#
#   make quickstart   core + PushT only (no system packages, no sudo), then the quickstart
#   make test         everything (.[all], `deps-sim`, `deps-real`), then the test suite
#   make deps-sim     system packages for MuJoCo (EGL/OSMesa) and robosuite (apt: needs root or sudo)
#   make deps-real    system packages for the real-robot tests (libusb, spacenavd, xvfb; apt)
#
# Each install leaves a stamp in $(VENV)/.policylab/ and runs again only when pyproject.toml (or
# its script) changes; `make clean-stamps` forgets them.

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
STAMPS := $(VENV)/.policylab
PYTEST_ARGS ?=
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: test quickstart bench lint deps deps-sim deps-real clean clean-stamps

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so nothing else pulls an unpinned (CUDA, several GB) build:
#  - torch already importable: kept as it is;
#  - a GPU (nvidia-smi answers): torch==$(TORCH_VERSION) from PyPI, a CUDA build;
#  - no GPU: a CPU wheel that pip's configured find-links hold, else the one on PyTorch's CPU
#    index ($(TORCH_CPU_INDEX)); then torch's own dependencies from PyPI.
$(STAMPS)/torch: | $(PY)
	@mkdir -p $(STAMPS)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed"; \
	elif nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	else \
		$(PIP) install --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null \
			|| $(PIP) install --no-deps "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	fi
	@touch $@

$(STAMPS)/pusht: pyproject.toml setup.py $(STAMPS)/torch
	$(PIP) install -e ".[pusht]"
	@touch $@

$(STAMPS)/all: pyproject.toml setup.py $(STAMPS)/torch
	$(PIP) install -e ".[all]"
	@touch $@ $(STAMPS)/pusht

$(STAMPS)/deps-sim: .ci/install_sim_deps.sh $(STAMPS)/all
	.ci/install_sim_deps.sh $(PY)
	@touch $@

$(STAMPS)/deps-real: .ci/install_real_deps.sh | $(PY)
	.ci/install_real_deps.sh
	@mkdir -p $(STAMPS) && touch $@

deps: $(STAMPS)/all $(STAMPS)/deps-sim $(STAMPS)/deps-real
deps-sim: $(STAMPS)/deps-sim
deps-real: $(STAMPS)/deps-real

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

# when make started, before the install: a recipe's $(shell ...) would run after its prerequisites
STARTED_AT := $(shell date +%s)

quickstart: $(STAMPS)/pusht
	$(PY) -m policylab.quickstart --started_at $(STARTED_AT)

bench: deps
	$(PY) bench/data_loading.py

lint: $(STAMPS)/all
	$(PY) -m ruff check policylab tests bench

clean-stamps:
	rm -rf $(STAMPS)

clean:
	rm -rf outputs .pytest_cache .hypothesis
