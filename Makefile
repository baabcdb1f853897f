# The two commands a new user needs: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean gpu-wheels

install: $(STAMP)

# torch is pinned here (not in pyproject) so pip takes the build that lies on this machine's disk.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunegate demo

# Lint, format check and type check first (quick), then the tests.
test: $(STAMP)
	$(PY) -m ruff check prunegate tests
	$(PY) -m ruff format --check prunegate tests
	$(PY) -m mypy
	$(PY) -m pytest -q --durations=30

clean:
	rm -rf $(VENV) demo-output .pytest_cache

# What bench/gpu.sh installs on a GPU machine without network (see its header): the wheels of the
# runtime dependencies but torch/torchvision for GPU_PYTHON, and a slice of ../shared, in
# bench/wheels; prints the folder's size. ORT_GPU=1 adds onnxruntime-gpu (over the 64 MiB carry).
GPU_PYTHON ?= 3.12
ORT_GPU ?= 0
gpu-wheels:
	PYTHON=$(PYTHON) GPU_PYTHON=$(GPU_PYTHON) ORT_GPU=$(ORT_GPU) bash bench/gpu.sh --prepare
