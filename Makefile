PYTHON ?= python3
# Where no torch is installed yet, take the CPU wheel (this project's machines hold it locally);
# an existing torch (a CUDA build on a GPU machine, say) is kept as it is.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-all lint bench demo

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest

test-all:
	$(PYTHON) -m pytest -m "not gpu"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

demo:
	$(PYTHON) -m longattn_cli.demo

# The README's Performance table; e.g. make bench BENCH_ARGS="--scope model --lengths 1024,2048"
BENCH_ARGS ?= --scope layer --lengths 512,1024,2048 --reference
bench:
	$(PYTHON) -m longattn_cli benchmark $(BENCH_ARGS) --json bench.json --csv bench.csv
