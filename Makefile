PYTHON ?= python3
# Where no torch is installed yet, take the CPU wheel (this project's machines hold it locally);
# an existing torch (a CUDA build on a GPU machine, say) is kept as it is.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-slow test-minimum test-all lint bench demo docs

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest

# The slow-marked cases (real multi-process launches, the GPU check's CPU run, OOM and restart paths).
test-slow:
	$(PYTHON) -m pytest -m "slow and not gpu"

# The smoke set on the lowest declared versions (.ci/minimum-versions.txt), in a fresh virtual environment.
MINIMUM_VENV ?= .venv-minimum
test-minimum:
	rm -rf $(MINIMUM_VENV)
	$(PYTHON) -m venv $(MINIMUM_VENV)
	$(MINIMUM_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(MINIMUM_VENV)/bin/python -m pip install -q -c .ci/minimum-versions.txt -e ".[dev]"
	$(MINIMUM_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|accelerate|datasets) '
	$(MINIMUM_VENV)/bin/python -m pytest -m smoke

test-all:
	$(PYTHON) -m pytest -m "not gpu"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# The results tables and plots of README.md and docs/, rendered from results/ (CI checks they are current).
docs:
	$(PYTHON) scripts/render_docs.py

demo:
	$(PYTHON) -m longattn_cli.demo

# One layer of every mechanism against transformers' references, into a new folder per run (BENCH_OUT);
# e.g. make bench BENCH_ARGS="--scope model --lengths 1024,2048"
BENCH_ARGS ?= --scope layer --lengths 512,1024,2048 --reference
BENCH_OUT ?= runs/bench-$(shell date +%Y%m%d-%H%M%S)
bench:
	mkdir -p $(BENCH_OUT)
	$(PYTHON) -m longattn_cmd benchmark $(BENCH_ARGS) --json $(BENCH_OUT)/bench.json --csv $(BENCH_OUT)/bench.csv --plot $(BENCH_OUT)/bench.png
