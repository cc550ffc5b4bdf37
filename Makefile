# minivlm: `make lab` to study, `make test` to check everything. Both set up .venv first.
#
# Setup installs torch before the package: without an NVIDIA GPU the pinned CPU build
# (TORCH=torch==2.13.0; plain `torch` would pull a multi-GB CUDA build), with one `torch>=2.2`
# from the default index. Override with e.g. `make test TORCH=torch==2.9.1` and pass extra pip
# arguments for it with TORCH_PIP_ARGS="--index-url ...". A stamp file in .venv makes re-runs
# instant; editing pyproject.toml invalidates it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.minivlm-installed
HAS_GPU := $(shell nvidia-smi >/dev/null 2>&1 && echo yes)
TORCH ?= $(if $(HAS_GPU),torch>=2.2,torch==2.13.0)
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# `make test` runs on TEST_WORKERS pytest-xdist workers (0: in this process, torch's default threads).
# With workers each has one torch thread (OMP_NUM_THREADS=1 reaches the notebook kernels) and runs
# whole files (--dist loadfile: a notebook's cells in order, in one kernel). On the 2-core course
# machine two single-threaded workers beat one two-threaded run: 79 s against 110 s for notebooks
# 03 and 05 (issue 24). A cell that runs past CELL_TIMEOUT seconds fails (a hang, not a slow machine:
# a whole chapter notebook is budgeted 90 s).
TEST_WORKERS ?= 2
CELL_TIMEOUT ?= 600
TEST_ENV := $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)
# Jupyter refuses to run as root unless told; root is the norm in containers.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# Notebook folders that nbval executes (exercises/ raise NotImplementedError by design: tests check them).
NB_DIRS := $(wildcard notebooks solutions)

.PHONY: help install lab test notebooks exercises lint bench zoo clean distclean

help:
	@echo "make lab        JupyterLab on the course (sets up .venv first)"
	@echo "make test       unit tests + every chapter and solution notebook (nbval), on 2 workers"
	@echo "make notebooks  execute notebooks/ and solutions/, storing outputs"
	@echo "make exercises  regenerate exercises/ from solutions/"
	@echo "make lint | bench | zoo | clean | distclean"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	@if $(BIN)/python -c "import torch" >/dev/null 2>&1; then \
		echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else \
		echo "installing $(TORCH) ($(if $(HAS_GPU),NVIDIA GPU found,no NVIDIA GPU: CPU build))"; \
		$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH)"; \
	fi
	$(BIN)/python -m pip install -e ".[dev]"
	@# Test-only references installed --no-deps: torchscale's Multiway layers (chapter 05; its
	@# requirements timm and fairscale pull torchvision, which does not import beside the CPU torch)
	@# and the COCO caption scorers of pycocoevalcap (chapter 06; BLEU and CIDEr need none of its
	@# requirements, pycocotools and Java), and lucidrains' flamingo-pytorch (chapter 11) with the
	@# einops helper it imports. The code the tests compare needs only torch, numpy and einops.
	$(BIN)/python -m pip install --no-deps "torchscale==0.3.0" "pycocoevalcap==1.2" "flamingo-pytorch==0.1.2" \
		"einops-exts==0.0.4"
	@touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(ALLOW_ROOT)

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest tests $(NB_DIRS) --nbval-lax --nbval-cell-timeout=$(CELL_TIMEOUT) \
		-n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

notebooks: $(STAMP)
	$(BIN)/minivlm notebooks execute

exercises: $(STAMP)
	$(BIN)/minivlm exercises build --prune

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/minivlm bench render

zoo: $(STAMP)
	$(BIN)/minivlm zoo build all --workers 2

clean:
	rm -rf .pytest_cache .ruff_cache .test-timings build dist
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) *.egg-info
