# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch/torchvision from the machine's local wheels when present (pip picks them by version);
# any torch>=2.4 works, see pyproject.toml.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all bench reproduce lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC) || $(PY) -m pip install -q "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pccompile.demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/learn_step.py

# docs/reproduction.md and its figures from one run (~40 min on a quiet 2-core machine); needs
# Fashion-MNIST: apt-get install dataset-fashion-mnist. A smoke run: benchmarks/reproduce.py --quick
reproduce: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/reproduce.py

lint: $(STAMP)
	$(PY) -m ruff check pccompile tests benchmarks examples tools
	$(PY) -m ruff format --check pccompile tests benchmarks examples tools

format: $(STAMP)
	$(PY) -m ruff format pccompile tests benchmarks examples tools

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
