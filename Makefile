# ssm_perception: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-gpu demo test lint bench clean

setup:
	@bash scripts/setup_env.sh

setup-gpu:
	@bash scripts/setup_gpu.sh

demo: setup
	@$(PY) -m ssm_perception.demo

test: setup
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	@$(VENV)/bin/ruff check ssm_perception test scripts

clean:
	rm -rf build out .pytest_cache .hypothesis
