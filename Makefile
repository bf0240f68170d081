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
