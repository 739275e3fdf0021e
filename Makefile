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

DEMO_DIR ?= runs/fashion-mnist-demo

# The demo: get Fashion-MNIST (Debian package or official download), train a small Vim on it on the CPU (6-9
# minutes on 2 idle cores, about 90% test accuracy), then classify a few test images with the checkpoint it saved.
demo: setup
	$(BIN)/vimamba data fashion-mnist --samples $(DEMO_DIR)/samples --num 6
	$(BIN)/vimamba train --output $(DEMO_DIR) --overwrite
	$(BIN)/vimamba predict --checkpoint $(DEMO_DIR)/best.pth --top-k 3 $(DEMO_DIR)/samples/*.png

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
