# The two commands a newcomer runs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# The torch builds that install from this machine kind's local disk (see the Install section of README.md).
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test lint format bench clean docs

$(VENV)/.installed-runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-runtime
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed-runtime
	$(VENV)/bin/featx demo

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# docs/cli.md and the option tables of docs/pipelines.md come from the code (a test checks them)
docs: $(VENV)/.installed-test
	$(PY) tools/gen_docs.py

clean:
	rm -rf $(VENV) cache/* reports
