# Two commands for a new user (see README.md):
#   make demo   set everything up, then run the demo
#   make test   set up if needed, then run the test suite (what CI runs: .ci/run)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vimamba-installed

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing vimamba with its pinned dependencies (torch 2.14.1, torchvision 0.29.1, timm 1.0.x)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/vimamba models
	$(BIN)/vimamba info vim_tiny_patch16_224 --img-size 224 512 1024 1248

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
